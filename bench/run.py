"""Performance benchmarks: ESTA's PST against SN-Net's full fine-tuning on ViT-Ti/S/B.

The benchmarks live by topic beside this runner: ``bench/forward.py`` (stitch table build time,
forward overhead of the stitched model, all stitches with prefix reuse), ``bench/training.py``
(training step PST vs full: time, FLOPs, memory; utilisation), ``bench/checkpointing.py``
(gradient checkpointing of the PST step: memory saved, time paid) and ``bench/peft_methods.py`` (the step of
PST on DoRA, IA³, Adapter and AdaptFormer vs full fine-tuning: time, memory), ``bench/palette.py`` (switching
stitches in a loaded palette vs one batch-32 forward; a palette stitch vs its export, ViT and Stitched LLaMA),
``bench/dag.py`` (the DAG build of config/paper.yaml plus a 100,000-file custom data set, as a cluster's
login node builds it; full runs only). ``bench/common.py`` holds the
benchmarked model, the timing race and the output checks; each module's docstring says what it
measures and how.

Torch uses every core (``--threads``). CPU batches: 4 (training), 8 (forwards), 1 (all stitches),
64 (memory at the paper's batch, with and without checkpointing). On CUDA (batch 64) the steps and
forwards run under bf16 autocast, as ``esta.train`` and ``esta.vit.evaluate`` do. A race stops
repeating once it has run ``budget_s`` (60 s on CPU), so that a loaded machine stretches the run
less (about 4 minutes idle); the notes say how many repeats ran. Writes ``results.csv``
(benchmark,value,target,unit,met), rows with target "-" informational, and a sibling
``machine.json`` (machine, settings, checks passed, per-row notes).

    python bench/run.py [--quick] [--device cpu|cuda|auto] [--threads N] [--out bench/results.csv]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path

import torch

# ``python bench/run.py`` puts bench/ first on sys.path; the benchmark modules import as ``bench.*``.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import FAMILY, NUM_CLASSES, STITCH, MismatchError, Row, Settings, check_same  # noqa: E402
from bench.dag import bench_dag  # noqa: E402
from bench.forward import bench_all_stitches, bench_forward, bench_table  # noqa: E402
from bench.palette import bench_llm_palette, bench_palette, bench_palette_vs_export  # noqa: E402
from bench.training import bench_training  # noqa: E402
from esta.runtime import write_json  # noqa: E402
from esta.vit.anchors import build_family  # noqa: E402
from esta.vit.stitch import StitchedViT  # noqa: E402
from esta.vit.tuning import TuningConfig, make_tunable  # noqa: E402

__all__ = ["main", "check_same", "MismatchError"]

COLUMNS = ["benchmark", "value", "target", "unit", "met"]

CPU = Settings(
    train_batch=4, train_warmup=2, train_reps=9, eval_batch=8, eval_reps=9,
    all_batch=1, all_reps=3, all_timed=None, mm_size=2048, mm_count=8, budget_s=60, memory_batches=(64,),
    ckpt_batch=64,
)
CUDA = Settings(
    train_batch=64, train_warmup=3, train_reps=10, eval_batch=64, eval_reps=10,
    all_batch=64, all_reps=5, all_timed=None, mm_size=8192, mm_count=20, budget_s=60, ckpt_batch=64,
)
# --quick (tests): ViT-Ti and its first eight stitches into ViT-S (one shared prefix) in the
# all-stitches benchmark; the checkpointing memory at batch 2
QUICK = dict(
    train_warmup=1, train_reps=2, eval_reps=2, all_reps=1, all_timed=(0, *range(3, 11)), budget_s=20,
    memory_batches=(), ckpt_batch=2,
)
SETTINGS = {
    ("cpu", False): CPU,
    ("cpu", True): replace(CPU, train_batch=1, eval_batch=1, all_batch=1, mm_size=1024, mm_count=4, **QUICK),
    ("cuda", False): CUDA,
    ("cuda", True): replace(CUDA, train_batch=8, eval_batch=8, all_batch=8, mm_count=5, **QUICK),
}


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        python=platform.python_version(),
        torch=torch.__version__,
        timm=version("timm"),
        peft=version("peft"),
    )


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r.benchmark, f"{r.value:.6g}", r.target, r.unit, str(r.met).lower()])
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, few repeats (tests)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.csv")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: every core; fewer suits a shared machine's tests)")
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    st = SETTINGS[(device.type, args.quick)]
    info = machine_info(device)
    load_start = os.getloadavg()
    print(f"# {info['device_name']}, {info['cores']} cores, torch {info['torch']}, device {device}, "
          f"{args.threads} threads, load {load_start[0]:.2f}{', quick' if args.quick else ''}", flush=True)

    t0 = time.perf_counter()
    checks: list[str] = []
    rows: list[Row] = []

    def report(new: list[Row]) -> None:
        for r in new:
            status = "-" if r.target == "-" else ("met" if r.met else "MISSED")
            print(f"{r.benchmark:30s} {r.value:10.4g} {r.unit:9s} target {r.target:8s} {status:6s} {r.note}")
        print(f"#   ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
        rows.extend(new)

    report(bench_table())  # first: the table is timed from scratch
    net = StitchedViT(build_family(FAMILY, NUM_CLASSES)).to(device)
    report(bench_forward(net, st, device, checks))
    report(bench_all_stitches(make_tunable(net, TuningConfig(mode="full")), st, device, checks))
    del net
    report(bench_palette(st, device))
    report(bench_palette_vs_export(st, device))
    report(bench_llm_palette(st, device))
    report(bench_training(st, device))
    if not args.quick:  # two dry runs of config/paper.yaml (minutes): not in the tests' quick run
        report(bench_dag())

    wall = time.perf_counter() - t0
    write_csv(rows, args.out)
    run = dict(
        quick=args.quick,
        settings=asdict(st),
        stitch=STITCH,
        checks_passed=checks,
        wall_s=round(wall, 1),
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
        notes={r.benchmark: r.note for r in rows},
    )
    write_json(args.out.with_name("machine.json"), dict(machine=info, run=run))
    print(f"# {len(rows)} rows -> {args.out} in {wall:.0f} s; load {os.getloadavg()[0]:.2f}; checks: {checks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
