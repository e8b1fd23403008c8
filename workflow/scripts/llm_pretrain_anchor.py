"""Pretrain one tiny LLaMA anchor on procedural tasks A with its own step budget and lr, then save it
as a Hugging Face folder (save_pretrained, with the tokenizer) and record its tasks-A exact match."""

import os
import shutil

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from esta import runtime
from esta.llm.anchors import family
from esta.llm.build import encode, evaluate, load_tokenizer
from esta.llm.data import load_alpaca
from esta.llm.pretrain import pretrain
from esta.llm.stitch import StitchedLlama
from esta.train import clear_checkpoints, pick_device

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
i, seed = int(w.i), p.seed
pre = p.pretrain
tokenizer = load_tokenizer(inp.tokenizer)
data, report = encode(load_alpaca(inp.train), tokenizer, p.tokenizer, inp.train)
spec = family(p.family)[i]
torch.manual_seed(seed + i)
config = LlamaConfig(**dict(spec.config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=report.pad_token_id))
lm = LlamaForCausalLM(config)
device = pick_device(p.device)
settings = dict(spec=spec.config, pretrain=pre, i=i, data=runtime.file_digest(inp.train))
result = pretrain(lm, data, pre["steps"][i], pre["batch_size"], pre["lr"][i], pre["weight_decay"],
                  pre["warmup_frac"], seed + i, device, p.ckpt_dir, settings, p.checkpoint_every_s)
lm.to("cpu").eval()
metrics = evaluate(StitchedLlama([lm]), tokenizer, [0], load_alpaca(inp.test), p.tokenizer, p.eval).iloc[0]
log.info("%s: tasks-A exact match %.3f, NLL %.3f after %d steps (%.0f s)", spec.name, metrics["em"],
         metrics["nll"], result.steps, result.wall_s)
tmp = f"{out.folder}.tmp-{os.getpid()}"
lm.save_pretrained(tmp)
tokenizer.save_pretrained(tmp)
shutil.rmtree(out.folder, ignore_errors=True)
os.replace(tmp, out.folder)
params = sum(t.numel() for t in lm.parameters())
runtime.write_json(out.info, dict(name=spec.name, anchor=i, params=params, check_metric="em", higher_is_better=True,
                                  value=float(metrics["em"]), metrics=metrics.to_dict(), steps=result.steps,
                                  wall_s=result.wall_s, final_loss=result.history[-1]["loss"], pretrain=pre,
                                  provenance=runtime.provenance(device)))
clear_checkpoints(p.ckpt_dir)
