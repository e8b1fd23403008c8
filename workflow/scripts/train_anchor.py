"""Train one anchor on its own, fully: upstream pretraining of the embedded family, or SN-Net's
`adapt` step on a task. It is the same loop as every other training (a one-stitch model)."""

import time

import torch

from esta import runtime
from esta.vit.tuning import TuningConfig, make_tunable
from esta.vit.anchors import family, family_at
from esta.vit.build import data_key, load_anchor, open_task, read_manifest, save_tensors
from esta.vit.data import mode_splits
from esta.vit.evaluate import evaluate
from esta.sampling import SamplerConfig, StitchSampler
from esta.vit.stitch import StitchedViT
from esta.train import TrainConfig, clear_checkpoints, pick_device, train

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
i, seed = int(w.i), int(w.get("seed", w.i))
spec = family(family_at(p.family, p.img_size))[i]
manifest = read_manifest(inp.data)
# SN-Net adapt: the task's training split of this mode, selection split in tuning mode only;
# pretraining: the upstream set's train/val.
split, eval_split = mode_splits(manifest["task"], w.mode) if "mode" in w.keys() else ("train", "val")
eval_split = None if w.get("mode") == "final" else eval_split
train_set = open_task(manifest, split, p.img_size, p.num_workers)
device = pick_device(p.device)

torch.manual_seed(seed)
anchor = load_anchor(spec, manifest["num_classes"], inp.get("anchor"))
model = make_tunable(StitchedViT([anchor]), TuningConfig(mode="full"))
cfg = TrainConfig(**p.train, seed=seed, checkpoint_every_s=p.checkpoint_every_s, num_workers=p.num_workers)
sampler = StitchSampler(1, cfg.total_steps(len(train_set)), SamplerConfig(kind="uniform"), seed=seed)
inputs = {"anchor": runtime.file_digest(inp.anchor)} if inp.get("anchor") else {}
settings = dict(anchor=spec.name, data=data_key(manifest), split=split, inputs=inputs,
                code=[runtime.file_digest(f) for f in inp.code])
t0 = time.monotonic()
result = train(model, train_set, cfg, sampler, p.ckpt_dir, settings=settings, device=device)
acc = None
if eval_split:
    acc = evaluate(model, open_task(manifest, eval_split, p.img_size, p.num_workers), [0], device=device)[0]
    log.info("%s accuracy on %s: %.4f after %d steps", spec.name, eval_split, acc, result.steps)

meta = dict(anchor=spec.name, timm_name=spec.timm_name, kwargs=spec.kwargs, num_classes=manifest["num_classes"],
            task=manifest["task"], split=split, seed=seed, train=cfg.to_dict(),
            provenance=runtime.provenance(device))
save_tensors(model.net.anchors[0].state_dict(), out.weights, meta)
runtime.write_json(out.info, dict(meta, eval_split=eval_split, accuracy=acc, steps=result.steps,
                                  wall_s=time.monotonic() - t0, params=sum(t.numel() for t in anchor.parameters()),
                                  peak_rss_mb=runtime.peak_rss_mb(), peak_device_mb=runtime.peak_device_mb(device)))
clear_checkpoints(p.ckpt_dir)
