"""The workflow's jobs on a dense task (spec §14, task ``dense/<name>``): what the classification rules'
scripts run when ``esta.vit.tasks.task_kind`` of their task is ``seg``. One rule per step serves both
kinds; only the model (a SETR-naive head per end anchor, :mod:`esta.vit.seg`), the data
(:mod:`esta.vit.seg_data`) and the metric (mIoU) differ, so each step's dense body lives here beside the
classification one in its script.

Every function takes the job's ``wildcards``, ``params``, ``input`` and ``output`` (Snakemake's) and the
job's logger; those that build the stitched model take config ``esta`` (``esta``: PST's settings and the
sampler; SN-Net trains everything). ``params.dense`` is config ``dense``; ``params.family`` the vision family.

- :func:`register`: a dense task's folder checked whole and described in its manifest (``register_data``).
- :func:`adapt`: one anchor fully fine-tuned alone (``snnet_adapt``: SN-Net step 1, the anchors-alone rows).
- :func:`ls_init`: stitching layers by least squares on a fixed training batch (``ls_init``, spec §4).
- :func:`train_stitched`: ESTA's PST or SN-Net's stitch step with the one loop (``train_esta``, ``snnet_stitch``).
- :func:`evaluate_split`: every stitch's mIoU on one split (``evaluate_stitches``).
- :func:`deploy_run`: the deployed stitches, ESTA by ``dense.deploy.score``, SN-Net by the selection
  mIoU (``select_esta``, ``snnet_deploy``; :mod:`esta.vit.seg_results`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from esta import runtime
from esta.vit.tasks import dense_name

__all__ = ["register", "adapt", "ls_init", "train_stitched", "evaluate_split", "deploy_run"]


def register(task: str, out: str, folder: str | None, data_root: str | None, log) -> None:
    """Check the ADE20K-layout folder of dense task ``task`` (``folder``: the rendered one, else
    ``data_root`` / the table's folder) and write its manifest: root, classes, reduce_zero_label, split
    sizes, pixels per class."""
    from esta.vit.seg_data import check_ade20k, class_names, dense_task

    name, out = dense_name(task), Path(out)
    row = dense_task(name)
    if folder is None and (data_root is None or row["folder"] is None):
        raise ValueError(f"dense task {task!r} needs config data_root holding {row['folder']!r}")
    root = Path(folder) if folder is not None else Path(data_root).expanduser() / row["folder"]
    desc = check_ade20k(root, row["num_classes"], row["reduce_zero_label"])
    rel = str(root.resolve()) if root.is_absolute() else os.path.relpath(root, out.parent)
    runtime.write_json(out, dict(task=task, root=rel, num_classes=row["num_classes"],
                                 reduce_zero_label=row["reduce_zero_label"], classes=class_names(name), **desc))
    log.info("%s: %s", root, desc["splits"])


def adapt(w, p, inp, out, log) -> None:
    """One anchor fine-tuned alone on a dense task with the one loop (a one-stitch model): the whole
    segmenter (head included) and its selection / test mIoU."""
    import torch

    from esta.sampling import SamplerConfig, StitchSampler
    from esta.tensors import save_tensors
    from esta.train import TrainConfig, clear_checkpoints, pick_device, train
    from esta.tunable import count_trainable
    from esta.vit.anchors import family, family_at
    from esta.vit.build import read_manifest
    from esta.vit.seg import evaluate_seg, seg_anchor
    from esta.vit.seg_data import open_dense
    from esta.vit.stitch import StitchedViT
    from esta.vit.tuning import TuningConfig, make_tunable

    i, seed, d = int(w.i), int(w.seed), p.dense
    m = read_manifest(inp.data)
    spec = family(family_at(p.family, d["img_size"]))[i]
    device = pick_device(p.device)
    torch.manual_seed(seed)
    model = make_tunable(StitchedViT([seg_anchor(spec, m["num_classes"], d["head_hidden"], inp.anchor)]),
                         TuningConfig(mode="full"))
    data = open_dense(m, "train", d, p.family)
    cfg = TrainConfig(**p.train, seed=seed, checkpoint_every_s=p.checkpoint_every_s)
    sampler = StitchSampler(1, cfg.total_steps(len(data)), SamplerConfig(kind="uniform"), seed=seed)
    settings = dict(anchor=spec.name, task=m["task"], splits=m["splits"], dense=d,
                    inputs=[runtime.file_digest(f) for f in [inp.anchor, *inp.code]])
    result = train(model, data, cfg, sampler, p.ckpt_dir, settings=settings, device=device)
    bs = d["eval_batch_size"]
    scores = {split: evaluate_seg(model, open_dense(m, split, d, p.family), [0], bs, device)[0]
              for split in ("selection", "test")}
    meta = dict(task=m["task"], anchor=i, seed=seed, train=cfg.to_dict(), provenance=runtime.provenance(device))
    save_tensors(model.net.anchors[0].state_dict(), out.weights, meta)
    runtime.write_json(out.info, dict(meta, trainable_params=count_trainable(model), steps=result.steps,
                                      wall_s=result.wall_s, selection_miou=scores["selection"]["miou"],
                                      test_miou=scores["test"]["miou"], test_pixel_acc=scores["test"]["pixel_acc"]))
    log.info("anchor %d alone: test mIoU %.4f", i, scores["test"]["miou"])
    clear_checkpoints(p.ckpt_dir)


def ls_init(w, p, inp, out, log) -> None:
    """Stitching layers of a segmentation model by least squares on ``dense.ls_init_images`` un-augmented
    training images: ESTA on the upstream anchors, SN-Net on its adapted ones."""
    from esta.tensors import save_tensors
    from esta.vit.build import read_manifest
    from esta.vit.seg import build_seg_family
    from esta.vit.seg_data import open_dense
    from esta.vit.seg_results import fixed_seg_batch
    from esta.vit.stitch import StitchedViT
    from esta.vit.stitch import ls_init as fit

    d, seed = p.dense, int(w.seed)
    m = read_manifest(inp.data)
    data = open_dense(m, "train", d, p.family, augment=False)
    images, _ = fixed_seg_batch(data, d["ls_init_images"], seed)
    net = StitchedViT(build_seg_family(p.family, m["num_classes"], d["img_size"], d["head_hidden"],
                                       list(inp.anchors), task=m["task"]))
    residual = fit(net, images)
    for (pair, layer), r in sorted(residual.items()):
        log.info("pair %d layer %d: relative LS residual %.4f", pair, layer, r)
    save_tensors(net.stitch_layers.state_dict(), out[0],
                 dict(task=m["task"], seed=seed, method=w.method, n_images=len(images)))


def _model(p, inp, m, method: str, esta: dict | None, state_file=None):
    """The run's segmenter: the method's anchors at ``dense.img_size`` with SETR heads, its stitching
    layers, its trainable set (PST from config ``esta``, SN-Net everything), and ``state_file``'s state."""
    from esta.vit.build import tuning_config
    from esta.vit.seg import assemble_seg

    d = p.dense
    return assemble_seg(p.family, m["num_classes"], d["img_size"], d["head_hidden"], list(inp.anchors), inp.stitch,
                        tuning_config(method, esta), state_file=state_file, task=m["task"])


def train_stitched(w, p, inp, out, log, method: str, esta: dict) -> None:
    """ESTA (PST from the upstream anchors, config ``esta.sampler``) or SN-Net's stitch step (everything
    trains from the adapted anchors, stitches drawn uniformly) on a dense task, with the one loop; ESTA
    keeps its importance statistics and snapshots (``train_esta``'s outputs)."""
    import torch

    from esta.analysis import snapshot_steps
    from esta.pareto import deployment_slots
    from esta.sampling import SamplerConfig, StitchSampler
    from esta.tensors import save_tensors
    from esta.train import TrainConfig, clear_checkpoints, pick_device, train
    from esta.tunable import count_trainable
    from esta.vit.build import read_manifest, tuning_config
    from esta.vit.seg import seg_costs
    from esta.vit.seg_data import open_dense

    seed, d = int(w.seed), p.dense
    m = read_manifest(inp.data)
    data = open_dense(m, "train", d, p.family)
    device = pick_device(p.device)
    torch.manual_seed(seed)  # the new heads
    acfg = tuning_config(method, esta)
    model = _model(p, inp, m, method, esta)
    cfg = TrainConfig(**p.train, seed=seed, checkpoint_every_s=p.checkpoint_every_s)
    scfg = SamplerConfig(**esta["sampler"]) if method == "esta" else SamplerConfig(kind="uniform")
    groups = None
    if scfg.kind == "grouped":  # deployment slots over head-free MACs at the segmentation size, anchors alone
        groups = deployment_slots(seg_costs(p.family, m["num_classes"], d["img_size"], d["head_hidden"]),
                                  d["deploy"]["intervals"])
    sampler = StitchSampler(model.net.num_stitches, cfg.total_steps(len(data)), scfg, seed=seed, groups=groups)
    n_trainable = count_trainable(model)
    log.info("%s on %s: %d stitches, %d trainable parameters", method, m["task"], model.net.num_stitches, n_trainable)
    settings = dict(method=method, tuning=acfg.to_dict(), sampler=scfg.to_dict(), task=m["task"], dense=d,
                    inputs=[runtime.file_digest(f) for f in [inp.stitch, *inp.anchors, *inp.code]])
    snap = snapshot_steps(sampler.total_steps) if "snapshots" in out.keys() else []
    result = train(model, data, cfg, sampler, p.ckpt_dir, settings=settings, device=device, snapshot_at=snap)
    meta = dict(method=method, task=m["task"], seed=seed, tuning=acfg.to_dict(), sampler=scfg.to_dict(),
                train=cfg.to_dict(), provenance=runtime.provenance(device))
    save_tensors(model.trainable(), out.model, meta)
    if snap:
        from esta.analysis import SNAPSHOT_FRACS

        tensors = {f"{step}/{k}": v for step, state in result.snapshots.items() for k, v in state.items()}
        save_tensors(tensors, out.snapshots, dict(meta, steps=snap, fracs=SNAPSHOT_FRACS,
                                                  total_steps=sampler.total_steps))
    runtime.write_csv(pd.DataFrame(result.history), out.history)
    if "stats" in out.keys():  # ESTA's importance statistics (the deployment scores read them)
        runtime.write_csv(sampler.stats(), out.stats)
    runtime.write_json(out.info, dict(meta, trainable_params=n_trainable, steps=result.steps, wall_s=result.wall_s,
                                      peak_rss_mb=runtime.peak_rss_mb()))
    clear_checkpoints(p.ckpt_dir)


def evaluate_split(w, p, inp, out, log, esta: dict) -> None:
    """Every stitch's mIoU and pixel accuracy on split ``w.split`` (selection or test; the test split's
    table adds the IoU per class), with its costs at the segmentation size (head included)."""
    from esta.train import pick_device
    from esta.vit.build import read_manifest
    from esta.vit.seg import evaluate_seg, seg_costs
    from esta.vit.seg_data import open_dense
    from esta.vit.seg_results import split_table

    d = p.dense
    m = read_manifest(inp.data)
    device = pick_device(p.device)
    model = _model(p, inp, m, w.method, esta, state_file=inp.model)
    scores = evaluate_seg(model, open_dense(m, w.split, d, p.family), batch_size=d["eval_batch_size"], device=device)
    costs = seg_costs(p.family, m["num_classes"], d["img_size"], d["head_hidden"])  # without LoRA
    table = split_table(costs, scores, w.split, m["classes"])
    log.info("%s: mIoU of %d stitches on %s, best %.4f", w.method, len(table), w.split,
             table[f"{w.split}_miou"].max())
    runtime.write_csv(table, out[0])


def deploy_run(w, p, inp, out, log, method: str, esta: dict | None = None) -> None:
    """The deployed stitches of a dense run per FLOPs interval (``esta.vit.seg_results.deploy``), with
    their costs and mIoU: ESTA by ``dense.deploy.score`` (``params.score``), SN-Net by the selection
    mIoU. ESTA's ``scores`` output is every stitch's table with its score."""
    from esta.vit.seg_results import deploy, stitch_table

    d, seed = p.deploy, int(w.seed)
    table = stitch_table(pd.read_csv(inp.selection), pd.read_csv(inp.test))
    score_name = p.score if method == "esta" else "evaluate"
    stats = pd.read_csv(inp.stats) if method == "esta" else None
    if score_name == "evaluate":
        score = table["selection_miou"]
    elif score_name == "loss_batch":
        from esta.train import pick_device
        from esta.vit.build import read_manifest
        from esta.vit.evaluate import stitch_losses
        from esta.vit.seg_data import open_dense
        from esta.vit.seg_results import fixed_seg_batch

        m = read_manifest(inp.data)
        model = _model(p, inp, m, method, esta, state_file=inp.model)
        train_set = open_dense(m, "train", p.dense, p.family, augment=False)
        x, y = fixed_seg_batch(train_set, d["loss_batch_examples"], seed)
        losses = stitch_losses(model, x, y, batch_size=p.dense["eval_batch_size"], device=pick_device(p.device))
        score = table["stitch_id"].map(losses)
    else:  # importance / loss: the sampler's training-time statistics
        score = stats.set_index("stitch_id").loc[table["stitch_id"], score_name].to_numpy()
    deployed = deploy(table, score_name, score, d["intervals"], stats, d["min_visits"])
    deployed = deployed.merge(table.drop(columns="macs_nohead"), on="stitch_id")  # with its costs and mIoU
    log.info("%s deployed by %s: %s", method, score_name, deployed["stitch_id"].tolist())
    runtime.write_csv(deployed, out[0])  # select_esta: deployed, scores; snnet_deploy: deployed
    if "scores" in out.keys():
        runtime.write_csv(table.assign(score=list(score)), out.scores)
