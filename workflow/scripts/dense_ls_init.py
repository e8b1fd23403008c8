"""Least-squares initialisation of the stitching layers of a segmentation model (spec §4) on a fixed
batch of un-augmented training images: ESTA on the upstream anchors, SN-Net on its adapted ones."""

from esta import runtime
from esta.tensors import save_tensors
from esta.vit.seg import build_seg_family
from esta.vit.build import read_manifest
from esta.vit.seg_data import open_dense
from esta.vit.seg_results import fixed_seg_batch
from esta.vit.stitch import StitchedViT, ls_init

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
m = read_manifest(inp.data)
seed = int(w.seed)
data = open_dense(m, "train", p.dense, p.family, augment=False)
images, _ = fixed_seg_batch(data, p.dense["ls_init_images"], seed)
net = StitchedViT(build_seg_family(p.family, m["num_classes"], p.dense["img_size"], p.dense["head_hidden"],
                                   list(inp.anchors), task=m["task"]))
residual = ls_init(net, images)
for (pair, layer), r in sorted(residual.items()):
    log.info("pair %d layer %d: relative LS residual %.4f", pair, layer, r)
save_tensors(net.stitch_layers.state_dict(), snakemake.output[0],
             dict(task=m["task"], seed=seed, method=w.method, n_images=len(images)))
