"""One anchor fine-tuned alone on a dense task: SN-Net's adapt step, and the anchors-alone reference
(the same loop as every training, a one-stitch model). Writes the whole segmenter (head included)
and its selection / test mIoU."""

import torch

from esta import runtime
from esta.sampling import SamplerConfig, StitchSampler
from esta.tensors import save_tensors
from esta.train import TrainConfig, clear_checkpoints, pick_device, train
from esta.tunable import count_trainable
from esta.vit.anchors import family, family_at
from esta.vit.seg import evaluate_seg, seg_anchor
from esta.vit.build import read_manifest
from esta.vit.seg_data import open_dense
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TuningConfig, make_tunable

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
i, seed = int(w.i), int(w.seed)
m = read_manifest(inp.data)
spec = family(family_at(p.family, p.dense["img_size"]))[i]
device = pick_device(p.device)
torch.manual_seed(seed)
model = make_tunable(StitchedViT([seg_anchor(spec, m["num_classes"], p.dense["head_hidden"], inp.anchor)]),
                     TuningConfig(mode="full"))
data = open_dense(m, "train", p.dense, p.family)
cfg = TrainConfig(**p.train, seed=seed, checkpoint_every_s=p.checkpoint_every_s)
sampler = StitchSampler(1, cfg.total_steps(len(data)), SamplerConfig(kind="uniform"), seed=seed)
settings = dict(anchor=spec.name, task=m["task"], splits=m["splits"], dense=p.dense,
                inputs=[runtime.file_digest(f) for f in [inp.anchor, *inp.code]])
result = train(model, data, cfg, sampler, p.ckpt_dir, settings=settings, device=device)
bs = p.dense["eval_batch_size"]
scores = {split: evaluate_seg(model, open_dense(m, split, p.dense, p.family), [0], bs, device)[0]
          for split in ("selection", "test")}
meta = dict(task=m["task"], anchor=i, seed=seed, train=cfg.to_dict(), provenance=runtime.provenance(device))
save_tensors(model.net.anchors[0].state_dict(), out.weights, meta)
runtime.write_json(out.info, dict(meta, trainable_params=count_trainable(model), steps=result.steps,
                                  wall_s=result.wall_s, selection_miou=scores["selection"]["miou"],
                                  test_miou=scores["test"]["miou"], test_pixel_acc=scores["test"]["pixel_acc"]))
log.info("anchor %d alone: test mIoU %.4f", i, scores["test"]["miou"])
clear_checkpoints(p.ckpt_dir)
