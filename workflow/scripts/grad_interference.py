"""Gradient interference through the shared LoRA (spec §10): for each training snapshot, the cosine
between the LoRA gradients of every pair of stitches sharing a module, on one fixed training batch."""

import pandas as pd
import torch

from esta import runtime
from esta.analysis import gradient_cosines
from esta.vit.anchors import family_at
from esta.vit.build import tuning_config, assemble, load_tensors_file, open_task, read_manifest
from esta.vit.data import mode_splits
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
manifest = read_manifest(inp.data)
device = pick_device(p.device)
model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch,
                 tuning_config("esta", p.method)).to(device)
data = open_task(manifest, mode_splits(w.task, "tuning")[0], p.img_size, augment=False)
g = torch.Generator().manual_seed(int(w.seed))
idx = torch.randperm(len(data), generator=g)[: p.method["train"]["batch_size"]].tolist()
x = torch.stack([data[i][0] for i in idx]).to(device)
y = torch.tensor([int(data[i][1]) for i in idx]).to(device)

tensors, meta = load_tensors_file(inp.snapshots)
trainable = model.trainable()
frames = []
for step, frac in zip(meta["steps"], meta["fracs"]):
    state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == str(step)}
    if set(state) != set(trainable):
        raise ValueError(f"{inp.snapshots}: snapshot {step} does not fit the model (other settings?)")
    with torch.no_grad():
        for k, v in state.items():
            trainable[k].copy_(v)
    cos = gradient_cosines(model, x, y)
    log.info("step %d (%.0f %%): %d pairs, mean cosine %.3f", step, 100 * frac, len(cos), cos["cosine"].mean())
    frames.append(cos.assign(step=step, frac=frac))
out = pd.concat(frames, ignore_index=True).assign(task=w.task, seed=int(w.seed), variant=w.variant,
                                                   stitch_biases=p.method["stitch_biases"])
runtime.write_csv(out, snakemake.output[0])
