"""One Stitched LLaMA PST training job: ESTA over every stitch (rule ``llm_train_esta``) or one anchor
adapted alone (``llm_adapt_anchor``), in this process or data parallel over ``nproc`` processes
(spec §1 "Scale-out", §11 "Data parallel with a per-step parameter subset").

A job is described by a JSON-able ``spec`` (the rule's params, inputs and outputs). ``run(spec)``
trains in this process; ``launch(spec)`` with ``spec["nproc"] > 1`` starts ``torchrun --standalone
--nproc_per_node N -m esta.llm.job SPEC.json`` (gloo on CPU, nccl on GPU), whose ranks join the
process group, start from rank 0's trainable state (``esta.llm.distributed.data_parallel``), each
take its share of every global batch and train the same stitch per step; rank 0 writes the
checkpoints and the outputs. The result equals one process's within float rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from esta import runtime
from esta.llm import distributed
from esta.llm.build import assemble, encode, load_tokenizer, stitched
from esta.llm.data import load_alpaca
from esta.llm.tuning import trainable_by_kind
from esta.pareto import deployment_slots
from esta.sampling import SamplerConfig, StitchSampler
from esta.scores import LossWindow
from esta.tensors import save_tensors
from esta.train import TrainConfig, clear_checkpoints, pick_device, train
from esta.tunable import count_trainable

__all__ = ["run", "launch"]


def _dtypes(model) -> str:
    return "/".join(sorted({str(t.dtype).removeprefix("torch.") for t in model.trainable().values()}))


def run(spec: dict, world: tuple[int, int] | None = None) -> None:
    """Train the job ``spec`` describes; ``world`` = (rank, size) of a data-parallel run already in
    its process group (None: one process). Only rank 0 writes outputs."""
    p, inp, out = spec["params"], spec["input"], spec["output"]
    rank, size = world or (0, 1)
    seed, alone = int(spec["seed"]), spec["rule"] == "llm_adapt_anchor"
    t = p["train"]
    net, _ = stitched(p["folders"], p["dtype"], stitch_init=None if alone else inp["stitch"],
                      anchors=[int(spec["anchor"])] if alone else None, rule=p["stitch_rule"])
    tokenizer = load_tokenizer(inp["tokenizer"])
    data, report = encode(load_alpaca(inp["train"]), tokenizer, p["tokenizer"], inp["train"])
    torch.manual_seed(seed)
    model = assemble(net, p["pst"])
    cfg = TrainConfig(epochs=t["epochs"], batch_size=t["batch_size"], lr=t["lr"], weight_decay=t["weight_decay"],
                      warmup_epochs=t["warmup_epochs"], seed=seed, checkpoint_every_s=p["checkpoint_every_s"],
                      grad_checkpointing=t["grad_checkpointing"])
    scfg = SamplerConfig(**p["sampler"]) if not alone else SamplerConfig(kind="uniform")
    groups = None
    if scfg.kind == "grouped":
        # the deployment slots over stitch parameters (spec §11): each anchor a slot of its own, so the
        # large anchor, whose per-parameter importance is the smallest, is not starved inside its interval
        table = pd.read_csv(inp["stitches"]).set_index("stitch_id").loc[range(net.num_stitches)].reset_index()
        groups = deployment_slots(table, p["intervals"], cost="params")
    # every rank draws with the same seed: one stitch per step for all of them
    # the visits the `loss` deployment score averages (llm.deploy.loss)
    window = LossWindow(**p["loss_window"]) if p.get("loss_window") else LossWindow()
    sampler = StitchSampler(net.num_stitches, cfg.total_steps(len(data)), scfg, seed=seed, groups=groups,
                            loss_window=window)
    device = pick_device(p["device"])
    if device.type == "cuda" and size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if size > 1:
        distributed.data_parallel(model.to(device))
    settings = dict(rule=spec["rule"], pst=p["pst"], sampler=scfg.to_dict(), loss_window=window.to_dict(), dtype=p["dtype"], anchor=spec["anchor"],
                    stitch_rule=p["stitch_rule"], nproc=size,
                    inputs=[runtime.file_digest(f) for f in [inp["train"], *([] if alone else [inp["stitch"]])]],
                    code=[runtime.file_digest(f) for f in inp["code"]])
    result = train(model, data, cfg, sampler, p["ckpt_dir"], settings=settings, device=device, progress=rank == 0)
    if rank != 0:
        return
    meta = dict(rule=spec["rule"], stitch_rule=p["stitch_rule"], seed=seed, pst=p["pst"], sampler=scfg.to_dict(),
                loss_window=window.to_dict(),
                train=cfg.to_dict(), dtype=p["dtype"], nproc=size,
                groups=None if groups is None else [int(g) for g in groups], provenance=runtime.provenance(device))
    save_tensors(model.trainable(), out["model"], meta)
    runtime.write_csv(pd.DataFrame(result.history), out["history"])
    runtime.write_csv(sampler.stats(), out["stats"])
    runtime.write_json(out["info"], dict(
        meta, trainable_params=count_trainable(model), trainable_by_kind=trainable_by_kind(model),
        trainable_dtype=_dtypes(model), steps=result.steps, resumed_from=result.resumed_from, wall_s=result.wall_s,
        encoding=report.to_dict(), peak_rss_mb=runtime.peak_rss_mb(), peak_device_mb=runtime.peak_device_mb(device)))
    clear_checkpoints(p["ckpt_dir"])


def launch(spec: dict, spec_file: str | Path, threads: int = 1) -> None:
    """Run the job in this process (``spec["nproc"]`` 1) or under torchrun over ``nproc``
    processes, each with ``threads // nproc`` torch threads (at least one); ``spec_file`` is where
    the spec is written for the ranks to read. A failing rank fails the call, naming the command."""
    nproc = int(spec["nproc"])
    if nproc == 1:
        run(spec)
        return
    runtime.write_json(spec_file, spec)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "esta.llm.job", str(spec_file)]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // nproc)))
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"data-parallel training failed ({proc.returncode}): {' '.join(cmd)}")


def _main(spec_file: str) -> None:
    """A torchrun rank: join the group, train, leave."""
    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    world = distributed.init_process_group(pick_device(spec["params"]["device"]))
    try:
        run(spec, world)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1])
