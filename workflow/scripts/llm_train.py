"""PST on Stitched LLaMA with the shared loop and sampler: ESTA over every stitch of the anchors
(llm_train_esta), or one anchor adapted alone with the same LoRA recipe, the baseline a user would
otherwise run (llm_adapt_anchor: a one-stitch model)."""

import pandas as pd
import torch

from esta import runtime
from esta.llm.build import assemble, encode, load_tokenizer, stitched
from esta.tensors import save_tensors
from esta.llm.data import load_alpaca
from esta.llm.tuning import trainable_by_kind
from esta.pareto import deployment_slots
from esta.sampling import SamplerConfig, StitchSampler
from esta.train import TrainConfig, clear_checkpoints, pick_device, train
from esta.tunable import count_trainable

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
seed = int(w.seed)
alone = snakemake.rule == "llm_adapt_anchor"
t = p.train
net, _ = stitched(p.folders, p.dtype, stitch_init=None if alone else inp.stitch,
                  anchors=[int(w.i)] if alone else None, rule=p.stitch_rule)
tokenizer = load_tokenizer(inp.tokenizer)
data, report = encode(load_alpaca(inp.train), tokenizer, p.tokenizer, inp.train)
torch.manual_seed(seed)
model = assemble(net, p.pst)
cfg = TrainConfig(epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"], weight_decay=t["weight_decay"],
                  warmup_epochs=t["warmup_epochs"], seed=seed, checkpoint_every_s=p.checkpoint_every_s,
                  grad_checkpointing=t["grad_checkpointing"])
scfg = SamplerConfig(**p.sampler) if not alone else SamplerConfig(kind="uniform")
groups = None
if scfg.kind == "grouped":
    # the deployment slots over stitch parameters (spec §11): each anchor a slot of its own, so the
    # large anchor, whose per-parameter importance is the smallest, is not starved inside its interval
    table = pd.read_csv(inp.stitches).set_index("stitch_id").loc[range(net.num_stitches)].reset_index()
    groups = deployment_slots(table, p.intervals, cost="params")
sampler = StitchSampler(net.num_stitches, cfg.total_steps(len(data)), scfg, seed=seed, groups=groups)
n_trainable, by_kind = count_trainable(model), trainable_by_kind(model)
log.info("%s: %d stitches, %d trainable parameters %s", snakemake.rule, net.num_stitches, n_trainable, by_kind)
device = pick_device(p.device)
settings = dict(rule=snakemake.rule, pst=p.pst, sampler=scfg.to_dict(), dtype=p.dtype, anchor=w.get("i"),
                stitch_rule=p.stitch_rule,
                inputs=[runtime.file_digest(f) for f in [inp.train, *([] if alone else [inp.stitch])]],
                code=[runtime.file_digest(f) for f in inp.code])
result = train(model, data, cfg, sampler, p.ckpt_dir, settings=settings, device=device)
meta = dict(rule=snakemake.rule, stitch_rule=p.stitch_rule, seed=seed, pst=p.pst, sampler=scfg.to_dict(),
            train=cfg.to_dict(), dtype=p.dtype,
            groups=None if groups is None else [int(g) for g in groups], provenance=runtime.provenance(device))
save_tensors(model.trainable(), out.model, meta)
runtime.write_csv(pd.DataFrame(result.history), out.history)
runtime.write_csv(sampler.stats(), out.stats)
runtime.write_json(out.info, dict(meta, trainable_params=n_trainable, trainable_by_kind=by_kind, steps=result.steps,
                                  resumed_from=result.resumed_from,
                                  wall_s=result.wall_s, encoding=report.to_dict(), peak_rss_mb=runtime.peak_rss_mb(),
                                  peak_device_mb=runtime.peak_device_mb(device)))
clear_checkpoints(p.ckpt_dir)
