"""Write every deployed stitch as a standalone model (safetensors + JSON) with an index table."""

from pathlib import Path

import pandas as pd

from esta import runtime
from esta.vit.build import tuning_config, anchor_arch, assemble, read_manifest
from esta.tensors import load_tensors_file
from esta.vit.data import describe_transform
from esta.vit.anchors import family_at
from esta.vit.export import export_stitch

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
fam = family_at(p.family, p.img_size)
deployed = pd.read_csv(inp.accuracy)
model = assemble(fam, read_manifest(inp.data)["num_classes"], inp.anchors, inp.stitch,
                 tuning_config(w.method, p.method[w.method]), state_file=inp.model)
trained = load_tensors_file(inp.model)[1]
# a standalone stitch must say how its inputs are prepared (config keys data.normalize, data.fgvc_interpolation)
transform = dict(img_size=p.img_size, **describe_transform(p.normalize, p.family, p.fgvc_interpolation))
out = Path(snakemake.output[0])
files = []
for row in deployed.itertuples():
    prov = dict(method=w.method, variant=w.variant, task=w.task, seed=int(w.seed), trained_in=p.mode,
                test_accuracy=row.test_accuracy, transform=transform, training=trained)
    files.append(export_stitch(model, int(row.stitch_id), out, anchor_arch(fam), prov).name)
deployed["file"] = files
runtime.write_csv(deployed, out / "index.csv")
log.info("exported %d stitches to %s", len(files), out)
