"""Every stitch of a trained segmentation model on the selection and test splits (mIoU, pixel
accuracy, IoU per class), and the deployed stitches: ESTA by the configured one-stage score, SN-Net by
its evaluation pass (selection mIoU), per FLOPs interval (esta.vit.seg_results)."""

import pandas as pd

from esta import runtime
from esta.train import pick_device
from esta.vit.build import read_manifest, tuning_config
from esta.vit.seg_data import open_dense
from esta.vit.evaluate import stitch_losses
from esta.vit.seg import assemble_seg, evaluate_seg, seg_costs
from esta.vit.seg_results import deploy, fixed_seg_batch, stitch_table

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
seed, method, d = int(w.seed), w.method, p.dense
m = read_manifest(inp.data)
device = pick_device(p.device)
model = assemble_seg(p.family, m["num_classes"], d["img_size"], d["head_hidden"], list(inp.anchors), inp.stitch,
                     tuning_config(method, p.esta), state_file=inp.model, task=m["task"])
bs = d["eval_batch_size"]
scores = {split: evaluate_seg(model, open_dense(m, split, d, p.family), batch_size=bs, device=device)
          for split in ("selection", "test")}
costs = seg_costs(p.family, m["num_classes"], d["img_size"], d["head_hidden"])  # without LoRA
table = stitch_table(costs, scores["selection"], scores["test"], m["classes"])
stats = pd.read_csv(inp.stats)
score_name = d["deploy"]["score"] if method == "esta" else "evaluate"
if score_name == "evaluate":
    score = table["selection_miou"]
elif score_name == "loss_batch":
    train_set = open_dense(m, "train", d, p.family, augment=False)
    x, y = fixed_seg_batch(train_set, d["deploy"]["loss_batch_examples"], seed)
    score = table["stitch_id"].map(stitch_losses(model, x, y, batch_size=bs, device=device))
else:  # importance / loss: the sampler's training-time statistics
    score = stats.set_index("stitch_id").loc[table["stitch_id"], score_name].to_numpy()
deployed = deploy(table, score_name, score, d["deploy"]["intervals"], stats, d["deploy"]["min_visits"])
deployed = deployed.merge(table.drop(columns="macs_nohead"), on="stitch_id")  # with its costs and mIoU
log.info("%s deployed by %s: %s", method, score_name, deployed["stitch_id"].tolist())
runtime.write_csv(table.assign(score=list(score)), out.stitches)
runtime.write_csv(deployed, out.deployed)
