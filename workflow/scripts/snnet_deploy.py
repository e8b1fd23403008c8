"""SN-Net's `deploy` step: accuracy of every stitch on the selection split, then the most accurate
stitch per FLOPs interval (spec §7), with each front anchor's prefix computed once per batch."""

import pandas as pd

from esta import runtime
from esta.build import adapt_config, assemble, open_task, read_manifest
from esta.data import split_files
from esta.evaluate import evaluate
from esta.sampling import select_deployed
from esta.train import pick_device

log = runtime.start_job(snakemake)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
manifest = read_manifest(inp.data)
model = assemble(p.family, manifest["num_classes"], inp.anchors, inp.stitch, adapt_config("snnet", {}),
                 state_file=inp.model)
data = open_task(manifest, split_files("tuning")[1], p.img_size)
acc = evaluate(model, data, batch_size=p.batch_size, device=pick_device(p.device))
stitches = pd.read_csv(inp.stitches)
table = pd.DataFrame(dict(stitch_id=list(acc), selection_accuracy=list(acc.values())))
runtime.write_csv(table, out.accuracy)
score = table.set_index("stitch_id").loc[stitches["stitch_id"], "selection_accuracy"].to_numpy()
deployed = select_deployed(stitches, score, p.deploy["intervals"])
log.info("deployed %d stitches: %s", len(deployed), deployed["stitch_id"].tolist())
runtime.write_csv(deployed, out.deployed)
