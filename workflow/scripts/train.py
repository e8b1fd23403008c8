"""Train a stitched model on one task: ESTA (PST + importance sampling) or SN-Net's `stitch` step
(everything trains, stitches drawn uniformly). One loop, esta.train.train, serves both."""

import json
from pathlib import Path

import pandas as pd
import torch

from esta import runtime
from esta.vit.tasks import task_kind
from esta.vit.build import tuning_config, assemble, data_key, open_task, read_manifest
from esta.tensors import load_tensors_file, save_tensors
from esta.analysis import SNAPSHOT_FRACS, snapshot_steps
from esta.vit.anchors import family_at
from esta.vit.data import describe_transform, mode_splits
from esta.pareto import deployment_slots
from esta.sampling import SamplerConfig, StitchSampler
from esta.scores import LossWindow
from esta.train import TrainConfig, clear_checkpoints, pick_device, train
from esta.vit.stages import start_from_adapted
from esta.tunable import count_trainable

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
seed = int(w.seed)
method = {"train_esta": "esta", "snnet_stitch": "snnet"}[snakemake.rule]

if task_kind(w.task) == "seg":  # a dense task (spec §14): the same loop on the segmenter
    from esta.vit.seg_jobs import train_stitched

    train_stitched(w, p, inp, out, log, method, p.method if method == "esta" else None)
else:
    manifest = read_manifest(inp.data)
    data = open_task(manifest, mode_splits(w.task, w.mode)[0], p.img_size, p.num_workers,
                     normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation)
    transform = describe_transform(p.normalize, p.family, p.fgvc_interpolation)  # recorded in settings and meta
    device = pick_device(p.device)

    torch.manual_seed(seed)  # task heads are initialised here
    acfg = tuning_config(method, p.method)
    # SN-Net's adapted anchors keep the head trained on this task; upstream heads are new
    model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch, acfg,
                     task=manifest["task"])
    stages = dict(stages="one") if method == "esta" else {}  # ESTA's esta.stages (SN-Net is always multistage)
    if inp.get("adapted"):  # three-stage ESTA: start from the anchors PST adapted alone (esta.vit.stages)
        n = start_from_adapted(model, [load_tensors_file(f)[0] for f in inp.adapted], list(inp.adapted))
        stage1 = [json.loads(Path(f).with_suffix(".json").read_text()) for f in inp.adapted]
        stages = dict(stages="three", adapt_steps=sum(r["steps"] for r in stage1),
                      adapt_wall_s=sum(r["wall_s"] for r in stage1),
                      adapt_peak_rss_mb=max(r["peak_rss_mb"] for r in stage1))
        log.info("three-stage: started from %d tensors of %d adapted anchors", n, len(stage1))
    cfg = TrainConfig(**p.train, seed=seed, checkpoint_every_s=p.checkpoint_every_s, num_workers=p.num_workers)
    scfg = SamplerConfig(**p.sampler)
    groups = None
    if scfg.kind == "grouped":  # the deployment slots: FLOPs intervals (head-free MACs) and the anchors
        table = pd.read_csv(inp.stitches).set_index("stitch_id").loc[range(model.net.num_stitches)]
        groups = deployment_slots(table, p.intervals)
    # the visits the `loss` deployment score averages (deploy.loss; SN-Net's stitch step keeps the default)
    window = LossWindow(**p.loss_window) if p.get("loss_window") else LossWindow()
    sampler = StitchSampler(model.net.num_stitches, cfg.total_steps(len(data)), scfg, seed=seed, groups=groups,
                            loss_window=window)
    n_trainable = count_trainable(model)
    log.info("%s on %s (%s): %d stitches, %d trainable parameters", method, w.task, w.mode,
             model.net.num_stitches, n_trainable)
    settings = dict(method=method, tuning=acfg.to_dict(), sampler=scfg.to_dict(), loss_window=window.to_dict(), task=w.task, mode=w.mode,
                    stages=stages.get("stages"),
                    inputs=[runtime.file_digest(f) for f in [inp.stitch, *inp.anchors, *inp.get("adapted", [])]],
                    code=[runtime.file_digest(f) for f in inp.code], data=data_key(manifest), transform=transform)
    # ESTA keeps snapshots of its trainable state for the gradient-interference analysis (spec §10)
    snap = snapshot_steps(sampler.total_steps) if "snapshots" in out.keys() else []
    result = train(model, data, cfg, sampler, p.ckpt_dir, settings=settings, device=device, snapshot_at=snap)

    meta = dict(method=method, task=w.task, seed=seed, mode=w.mode, tuning=acfg.to_dict(), sampler=scfg.to_dict(),
                loss_window=window.to_dict(),
                train=cfg.to_dict(), transform=transform, provenance=runtime.provenance(device), **stages)
    save_tensors(model.trainable(), out.model, meta)
    if snap:
        tensors = {f"{step}/{k}": v for step, state in result.snapshots.items() for k, v in state.items()}
        save_tensors(tensors, out.snapshots, dict(meta, steps=snap, fracs=SNAPSHOT_FRACS, total_steps=sampler.total_steps))
    runtime.write_csv(pd.DataFrame(result.history), out.history)
    if "stats" in out.keys():  # ESTA's importance statistics; SN-Net samples uniformly and has none
        runtime.write_csv(sampler.stats(), out.stats)
    runtime.write_json(out.info, dict(meta, trainable_params=n_trainable, steps=result.steps,
                                      resumed_from=result.resumed_from, wall_s=result.wall_s,
                                      wall_s_segment=result.wall_s_segment,
                                      peak_rss_mb=runtime.peak_rss_mb(), peak_device_mb=runtime.peak_device_mb(device)))
    clear_checkpoints(p.ckpt_dir)
