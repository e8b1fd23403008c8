"""Test accuracy of every deployed stitch, for the stitch ids chosen in tuning mode (spec §8)."""

import pandas as pd

from esta import runtime
from esta.vit.build import tuning_config, assemble, open_task, read_manifest
from esta.vit.anchors import family_at
from esta.vit.data import mode_splits
from esta.vit.evaluate import evaluate
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
manifest = read_manifest(inp.data)
model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch,
                 tuning_config(w.method, p.method[w.method]), state_file=inp.model)
deployed = pd.read_csv(inp.deployed)
device = pick_device(p.device)
# reported numbers are always on the test split (spec §8); a split too large to keep in memory is
# decoded by num_workers DataLoader workers, both when opened and when evaluated
data = open_task(manifest, mode_splits(w.task, "final")[1], p.img_size, p.num_workers, normalize=p.normalize,
                 family=p.family, fgvc_interpolation=p.fgvc_interpolation)
acc = evaluate(model, data, deployed["stitch_id"].tolist(), batch_size=p.batch_size, device=device,
               num_workers=p.num_workers)
deployed["test_accuracy"] = deployed["stitch_id"].map(acc)
prov = runtime.provenance(device)
# a library the job did not import (peft in an SN-Net job) is left empty
deployed = deployed.assign(**{k: prov.get(k) for k in ("device", "device_name", "dtype", "torch", "timm", "peft")})
# how inputs were normalised and resized is part of the result (config keys data.normalize, data.fgvc_interpolation)
deployed = deployed.assign(normalize=p.normalize, fgvc_interpolation=p.fgvc_interpolation)
log.info("test accuracy of deployed stitches: %s", {k: round(v, 4) for k, v in acc.items()})
runtime.write_csv(deployed, snakemake.output[0])
