"""Accuracy of every stitch of a tuning-mode model on the selection split (tuning mode's evaluation
split) or the test split, with each front anchor's prefix shared where parameters are (SN-Net)."""

import pandas as pd

from esta import runtime
from esta.vit.tasks import task_kind
from esta.vit.anchors import family_at
from esta.vit.build import tuning_config, assemble, open_task, read_manifest
from esta.vit.data import mode_splits
from esta.vit.evaluate import evaluate
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input

if task_kind(w.task) == "seg":  # mIoU on a dense task (spec §14)
    from esta.vit.seg_jobs import evaluate_split

    evaluate_split(w, p, inp, snakemake.output, log, p.method["esta"])
else:
    manifest = read_manifest(inp.data)
    split = mode_splits(w.task, "tuning")[1] if w.split == "selection" else mode_splits(w.task, "final")[1]
    model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch,
                     tuning_config(w.method, p.method[w.method]), state_file=inp.model)
    device = pick_device(p.device)
    data = open_task(manifest, split, p.img_size, p.num_workers, normalize=p.normalize, family=p.family,
                     fgvc_interpolation=p.fgvc_interpolation)
    acc = evaluate(model, data, batch_size=p.batch_size, device=device, num_workers=p.num_workers)
    table = pd.DataFrame(dict(stitch_id=list(acc), accuracy=list(acc.values()), split=split,
                              normalize=p.normalize, fgvc_interpolation=p.fgvc_interpolation))
    log.info("%s: accuracy of %d stitches on %s, best %.4f", w.method, len(table), split, table["accuracy"].max())
    runtime.write_csv(table.rename(columns={"accuracy": f"{w.split}_accuracy"}), snakemake.output[0])
