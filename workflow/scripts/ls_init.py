"""Least-squares initialisation of the stitching layers on one batch of training images (spec §4)."""

import torch

from esta import runtime
from esta.vit.build import load_anchors, open_task, read_manifest, save_tensors
from esta.vit.anchors import family_at
from esta.vit.data import mode_splits
from esta.vit.stitch import StitchedViT, ls_init

log = runtime.start_job(snakemake)
w, p = snakemake.wildcards, snakemake.params
manifest = read_manifest(snakemake.input.data)
data = open_task(manifest, mode_splits(w.task, w.mode)[0], p.img_size, augment=False)
g = torch.Generator().manual_seed(int(w.seed))
idx = torch.randperm(len(data), generator=g)[: p.n_images].tolist()
images = torch.stack([data[i][0] for i in idx])  # (N, 3, H, W), un-augmented

net = StitchedViT(load_anchors(family_at(p.family, p.img_size), manifest["num_classes"], snakemake.input.anchors))
residual = ls_init(net, images)
for (pair, layer), r in sorted(residual.items()):
    log.info("pair %d layer %d: relative LS residual %.4f", pair, layer, r)
meta = dict(task=w.task, seed=int(w.seed), mode=w.mode, n_images=len(idx),
            residual={f"{a}.{b}": r for (a, b), r in residual.items()})
save_tensors(net.stitch_layers.state_dict(), snakemake.output[0], meta)
