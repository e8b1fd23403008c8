"""ESTA's one-stage deployment (spec §6): per FLOPs interval the stitch with the best score
(``esta.scores``): training-time importance (highest) or loss (lowest) among the stitches with at least
`min_visits` visits (the loss: visits inside its window), the loss on fixed training examples after
training (`loss_batch`, a forward pass), or selection-split accuracy (`evaluate`); anchors always.
With `refresh`, importance is first recomputed for every stitch on one fixed training batch."""

import pandas as pd

from esta import runtime
from esta.vit.tasks import task_kind
from esta.pareto import deploy_by_score
from esta.scores import gate_visits

log = runtime.start_job(snakemake)
p, inp, w = snakemake.params, snakemake.input, snakemake.wildcards

if task_kind(w.task) == "seg":  # a dense task (spec §14): dense.deploy's score, with the stitches' mIoU
    from esta.vit.seg_jobs import deploy_run

    deploy_run(w, p, inp, snakemake.output, log, "esta", p.method)
else:
    stitches = pd.read_csv(inp.stitches)
    stats = pd.read_csv(inp.stats).set_index("stitch_id").loc[stitches["stitch_id"]]
    d, score_name = p.deploy, p.score


    def model_and_training_data():
        """The trained model and its tuning-mode training split, un-augmented (only these scores need
        torch: the other selections are table jobs)."""
        from esta.vit.anchors import family_at
        from esta.vit.build import assemble, open_task, read_manifest, tuning_config
        from esta.vit.data import mode_splits

        manifest = read_manifest(inp.data)
        model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch,
                         tuning_config("esta", p.method), state_file=inp.model, task=manifest["task"])
        data = open_task(manifest, mode_splits(manifest["task"], "tuning")[0], p.img_size, augment=False,
                         normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation, lazy=True)
        return model, data


    if score_name == "importance" and p.refresh:
        from esta.sampling import refresh_importance
        from esta.vit.build import fixed_batch

        model, data = model_and_training_data()
        x, y = fixed_batch(data, p.method["train"]["batch_size"], int(w.seed))
        score = refresh_importance(model, (x, y))
        log.info("importance refreshed on a fixed batch of %d training images", len(y))
    elif score_name in ("importance", "loss"):
        score = stats[score_name].to_numpy()
    elif score_name == "loss_batch":
        from esta.train import pick_device
        from esta.vit.build import fixed_batch
        from esta.vit.evaluate import stitch_losses

        model, data = model_and_training_data()
        x, y = fixed_batch(data, d["loss_batch"]["examples"], int(w.seed))
        losses = stitch_losses(model, x, y, batch_size=p.eval_batch_size, device=pick_device(p.device))
        score = stitches["stitch_id"].map(losses).to_numpy()
        log.info("loss of every stitch on %d fixed training images", len(y))
    else:  # evaluate: SN-Net's evaluation pass on the selection split
        score = pd.read_csv(inp.selection).set_index("stitch_id").loc[stitches["stitch_id"], "selection_accuracy"].to_numpy()
    deployed, scores = deploy_by_score(stitches, score_name, score, d["intervals"],
                                       visits=gate_visits(score_name, stats),
                                       min_visits=d["min_visits"])
    deployed["importance_refresh"] = bool(p.refresh)
    log.info("deployed %d stitches by %s: %s (dominated: %s)", len(deployed), score_name, deployed["stitch_id"].tolist(),
             deployed.loc[deployed["dominated"], "stitch_id"].tolist())
    runtime.write_csv(deployed, snakemake.output.deployed)
    runtime.write_csv(scores, snakemake.output.scores)  # every stitch's: the score analyses rank all of them
