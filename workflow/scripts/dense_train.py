"""Train a segmentation stitched model (spec §14) with the one loop: ESTA (PST from the upstream
anchors, the config's sampler) or SN-Net's stitch step (everything trains from the adapted anchors,
stitches drawn uniformly)."""

import pandas as pd
import torch

from esta import runtime
from esta.pareto import deployment_slots
from esta.sampling import SamplerConfig, StitchSampler
from esta.tensors import save_tensors
from esta.train import TrainConfig, clear_checkpoints, pick_device, train
from esta.tunable import count_trainable
from esta.vit.build import read_manifest, tuning_config
from esta.vit.seg_data import open_dense
from esta.vit.seg import assemble_seg, seg_costs

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
seed, method, d = int(w.seed), w.method, p.dense
m = read_manifest(inp.data)
data = open_dense(m, "train", d, p.family)
device = pick_device(p.device)
torch.manual_seed(seed)  # the new heads
acfg = tuning_config(method, p.esta)
model = assemble_seg(p.family, m["num_classes"], d["img_size"], d["head_hidden"], list(inp.anchors), inp.stitch,
                     acfg, task=m["task"])
cfg = TrainConfig(**d[method]["train"], seed=seed, checkpoint_every_s=p.checkpoint_every_s)
scfg = SamplerConfig(**p.esta["sampler"]) if method == "esta" else SamplerConfig(kind="uniform")
groups = None
if scfg.kind == "grouped":  # deployment slots over head-free MACs at the segmentation size, anchors alone
    groups = deployment_slots(seg_costs(p.family, m["num_classes"], d["img_size"], d["head_hidden"]),
                              d["deploy"]["intervals"])
sampler = StitchSampler(model.net.num_stitches, cfg.total_steps(len(data)), scfg, seed=seed, groups=groups)
n_trainable = count_trainable(model)
log.info("%s on %s: %d stitches, %d trainable parameters", method, m["task"], model.net.num_stitches, n_trainable)
settings = dict(method=method, tuning=acfg.to_dict(), sampler=scfg.to_dict(), task=m["task"], dense=d,
                inputs=[runtime.file_digest(f) for f in [inp.stitch, *inp.anchors, *inp.code]])
result = train(model, data, cfg, sampler, p.ckpt_dir, settings=settings, device=device)
meta = dict(method=method, task=m["task"], seed=seed, tuning=acfg.to_dict(), sampler=scfg.to_dict(),
            train=cfg.to_dict(), provenance=runtime.provenance(device))
save_tensors(model.trainable(), out.model, meta)
runtime.write_csv(pd.DataFrame(result.history), out.history)
runtime.write_csv(sampler.stats(), out.stats)
runtime.write_json(out.info, dict(meta, trainable_params=n_trainable, steps=result.steps, wall_s=result.wall_s,
                                  peak_rss_mb=runtime.peak_rss_mb()))
clear_checkpoints(p.ckpt_dir)
