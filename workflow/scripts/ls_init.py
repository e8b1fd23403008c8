"""Least-squares initialisation of the stitching layers on one batch of training images (spec §4)."""

from esta import runtime
from esta.vit.anchors import build_family, family_at
from esta.vit.build import fixed_batch, open_task, read_manifest, save_tensors
from esta.vit.data import mode_splits
from esta.vit.stitch import StitchedViT, ls_init

log = runtime.start_job(snakemake)
w, p = snakemake.wildcards, snakemake.params
manifest = read_manifest(snakemake.input.data)
data = open_task(manifest, mode_splits(w.task, w.mode)[0], p.img_size, augment=False,
                 normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation, lazy=True)
images, _ = fixed_batch(data, p.n_images, int(w.seed))  # (N, 3, H, W), un-augmented

net = StitchedViT(build_family(family_at(p.family, p.img_size), manifest["num_classes"], snakemake.input.anchors,
                              task=manifest["task"]))
residual = ls_init(net, images)
for (pair, layer), r in sorted(residual.items()):
    log.info("pair %d layer %d: relative LS residual %.4f", pair, layer, r)
meta = dict(task=w.task, seed=int(w.seed), mode=w.mode, n_images=len(images),
            residual={f"{a}.{b}": r for (a, b), r in residual.items()})
save_tensors(net.stitch_layers.state_dict(), snakemake.output[0], meta)
