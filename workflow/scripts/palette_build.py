"""The palette of one run before its latency is measured (spec §12; palette_latency adds it): task
tensors, stitch table (costs with the task's head, measured accuracy -- selection split where the run
has it, else test -- score, deployed, dominated), classes and eval transform, anchors by name and sha256."""

import pandas as pd

from esta import runtime
from esta.palette import bundle, stitch_table
from esta.tensors import read_meta
from esta.vit.anchors import family_at
from esta.vit.build import assemble, read_manifest, tuning_config
from esta.vit.data import describe_transform
from esta.vit.metrics import with_task_head
from esta.vit.palette import transform_record, write

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
manifest = read_manifest(inp.data)
fam = family_at(p.family, p.img_size)
cfg = tuning_config(w.method, p.method[w.method])
model = assemble(fam, manifest["num_classes"], inp.anchors, inp.stitch, cfg, state_file=inp.model)
stitches = with_task_head(pd.read_csv(inp.stitches), manifest["num_classes"])
deployed = pd.read_csv(inp.deployed)
accuracy = pd.read_csv(inp.accuracy)  # the deployed stitches of the model the palette holds
# every stitch's test accuracy where it was measured on this model (tuning mode), the deployed ones' always
test = pd.read_csv(inp.stitch_accuracy) if "stitch_accuracy" in inp.keys() else accuracy.iloc[:0]
test = pd.concat([test[~test["stitch_id"].isin(accuracy["stitch_id"])], accuracy])[["stitch_id", "test_accuracy"]]
selection = pd.read_csv(inp.selection) if "selection" in inp.keys() else None
table = stitch_table(stitches, deployed, None, test, selection)
transform = transform_record(w.task, manifest, p.img_size, describe_transform(p.normalize, p.family,
                                                                               p.fgvc_interpolation))
settings = dict(variant=w.variant, task=w.task, seed=int(w.seed), trained_in=p.mode,
                training=read_meta(inp.model), provenance=runtime.provenance())
out = write(snakemake.output[0], model, table, fam=fam, method=w.method, tuning=cfg, manifest=manifest,
            transform=transform, anchor_files=inp.anchors if w.method == "esta" else [], settings=settings)
if p.bundle:
    bundle(out)
log.info("palette %s: %d stitches, %d deployed", out, len(table), int(table["deployed"].sum()))
