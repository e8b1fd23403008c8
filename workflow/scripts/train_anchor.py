"""Train one anchor on its own: fully for the upstream pretraining of the embedded family, SN-Net's
`adapt` step on a task and the from-scratch control (no anchor input: random init); with PST for
stage 1 of three-stage ESTA (esta_adapt_anchor: the variant's PEFT and recipe, esta.vit.stages). It
is the same loop as every other training (a one-stitch model)."""

import time

import torch

from esta import runtime
from esta.vit.tasks import task_kind
from esta.vit.tuning import TuningConfig, make_tunable
from esta.vit.anchors import build_anchor, family, family_at
from esta.vit.build import data_key, open_task, read_manifest, tuning_config
from esta.tensors import save_tensors
from esta.vit.data import describe_transform, mode_splits
from esta.vit.evaluate import evaluate
from esta.sampling import SamplerConfig, StitchSampler
from esta.vit.stitch import StitchedViT
from esta.train import TrainConfig, clear_checkpoints, pick_device, train

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output

if task_kind(w.get("task", "")) == "seg":  # SN-Net's adapt step on a dense task (spec §14)
    from esta.vit.seg_jobs import adapt

    adapt(w, p, inp, out, log)
else:
    i, seed = int(w.i), int(w.get("seed", w.i))
    spec = family(family_at(p.family, p.img_size))[i]
    manifest = read_manifest(inp.data)
    # SN-Net adapt: the task's training split of this mode, selection split in tuning mode only;
    # pretraining: the upstream set's train/val.
    split, eval_split = mode_splits(manifest["task"], w.mode) if "mode" in w.keys() else ("train", "val")
    eval_split = None if w.get("mode") == "final" else eval_split
    tf = dict(normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation)
    train_set = open_task(manifest, split, p.img_size, p.num_workers, **tf)
    device = pick_device(p.device)

    torch.manual_seed(seed)
    # the input is an upstream anchor (or none): its head is never this task's, so the head is new
    anchor_file = inp.get("anchor") or None  # the control (scratch) declares no anchor: an empty input
    anchor = build_anchor(spec, manifest["num_classes"], anchor_file, keep_head=False)
    pst = p.get("method") is not None  # three-stage ESTA's stage 1: PST on the anchor alone
    tcfg = tuning_config("esta", p.method) if pst else TuningConfig(mode="full")
    model = make_tunable(StitchedViT([anchor]), tcfg)
    cfg = TrainConfig(**p.train, seed=seed, checkpoint_every_s=p.checkpoint_every_s, num_workers=p.num_workers)
    sampler = StitchSampler(1, cfg.total_steps(len(train_set)), SamplerConfig(kind="uniform"), seed=seed)
    inputs = {"anchor": runtime.file_digest(anchor_file)} if anchor_file else {}
    settings = dict(anchor=spec.name, data=data_key(manifest), split=split, inputs=inputs,
                    code=[runtime.file_digest(f) for f in inp.code], transform=describe_transform(**tf))
    result = train(model, train_set, cfg, sampler, p.ckpt_dir, settings=settings, device=device)
    t0 = time.monotonic()
    acc = None
    if eval_split:
        acc = evaluate(model, open_task(manifest, eval_split, p.img_size, p.num_workers, **tf), [0], device=device)[0]
        log.info("%s accuracy on %s: %.4f after %d steps", spec.name, eval_split, acc, result.steps)
    test_acc = None
    if p.get("evaluate_test", False):  # anchors alone on the test split: the reference runs of the tables
        test_split = mode_splits(manifest["task"], "final")[1]
        test_acc = evaluate(model, open_task(manifest, test_split, p.img_size, p.num_workers, **tf), [0],
                            device=device)[0]
        log.info("%s accuracy on %s: %.4f", spec.name, test_split, test_acc)
    eval_s = time.monotonic() - t0  # training time (all segments of a resumed run) + this evaluation

    meta = dict(anchor=spec.name, timm_name=spec.timm_name, kwargs=spec.kwargs, num_classes=manifest["num_classes"],
                task=manifest["task"], split=split, seed=seed, train=cfg.to_dict(),
                transform=describe_transform(**tf), provenance=runtime.provenance(device))
    if pst:  # the trainable state (PEFT, head, own biases), which esta.vit.stages maps onto the family
        meta["tuning"] = tcfg.to_dict()
        save_tensors(model.trainable(), out.state, meta)
    else:
        save_tensors(model.net.anchors[0].state_dict(), out.weights, meta)
    runtime.write_json(out.info, dict(meta, eval_split=eval_split, accuracy=acc, test_accuracy=test_acc,
                                      init="pretrained" if anchor_file else "scratch", steps=result.steps,
                                      wall_s=result.wall_s + eval_s, wall_s_segment=result.wall_s_segment,
                                      eval_wall_s=eval_s, params=sum(t.numel() for t in anchor.parameters()),
                                      trainable_params=sum(t.numel() for t in model.trainable().values()),
                                      peak_rss_mb=runtime.peak_rss_mb(), peak_device_mb=runtime.peak_device_mb(device)))
    clear_checkpoints(p.ckpt_dir)
