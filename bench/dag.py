"""DAG build time on a cluster's login node: ``snakemake -n`` of config/paper.yaml with one more task, a
custom image folder of 100,000 (empty) files, as ``custom/big`` (spec §13, issue 32).

On a cluster the DAG is built on the login node, often several times (dry runs, restarts); the custom
data set's fingerprint (``esta.vit.fingerprint.fingerprint``) is taken at every build. The folder is
``train`` and ``test`` of 100 classes (800 + 200 files each); the dry run plans every job of rule all
(no data or weights exist: everything is planned). Timed from the command's start to its end, Python's
start and the imports included; the best of ``repeats`` runs (the folder was just written, so its
entries are in the OS's directory cache, as a login node's repeated builds do). Target: < 10 s. Beside it, the same dry run without the
custom task, and the fingerprint alone against a stat of every file (what it cost before). What the
DAG build costs and what was cut (torch imports, ~100,000 code inputs now one stamp per job, repeated
config merges and schema parses) is in docs/cluster.md, "The DAG on the login node".

    python bench/dag.py [--files 100000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 100
TEST_SHARE = 0.2


def make_folder(root: Path, files: int) -> Path:
    """An image folder of ``files`` empty .jpg files (train/test x CLASSES classes)."""
    per_class = files // CLASSES
    n_test = round(per_class * TEST_SHARE)
    for c in range(CLASSES):
        for split, n in (("train", per_class - n_test), ("test", n_test)):
            folder = root / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (folder / f"{i:06d}.jpg").touch()
    return root


def dry_run_seconds(work: Path, override: Path) -> tuple[float, float, str]:
    """Wall time and CPU time (user + system: what a busy machine does not stretch) of ``snakemake -n``
    of rule all, and its output."""
    for name in ("config.yaml", "config", "esta", "workflow"):
        if not (work / name).exists():
            (work / name).symlink_to(ROOT / name)
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--directory", str(work), "--configfile",
           str(ROOT / "config" / "paper.yaml"), str(override)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def per_file_stat_seconds(root: Path) -> float:
    """The fingerprint as it was before issue 32: a stat of every file (the cost the DAG build paid)."""
    t0 = time.perf_counter()
    for here, _, files in os.walk(root):
        for f in files:
            os.stat(os.path.join(here, f))
    return time.perf_counter() - t0


def bench_dag(files: int = 100_000, repeats: int = 1) -> list[Row]:
    from esta.vit.fingerprint import fingerprint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_folder(tmp / "big", files)
        t0 = time.perf_counter()
        fingerprint(data)
        fp = time.perf_counter() - t0
        per_file = per_file_stat_seconds(data)
        paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
        big = tmp / "big.yaml"
        big.write_text(yaml.safe_dump({
            "datasets": {"big": {"source": "imagefolder", "path": str(data)}},
            "tasks": [*paper["tasks"], "custom/big"],
        }))
        alone = tmp / "alone.yaml"
        alone.write_text(yaml.safe_dump({"tasks": paper["tasks"]}))
        (tmp / "work").mkdir()
        walls = {}
        for name, override in (("big", big), ("alone", alone)):
            runs = [dry_run_seconds(tmp / "work", override) for _ in range(repeats)]
            walls[name] = [w for w, _, _ in runs]
            walls[name + "_cpu"] = min(c for _, c, _ in runs)
            jobs = next((line.split()[-1] for line in runs[-1][2].splitlines() if line.startswith("total")), "?")
            walls[name + "_jobs"] = jobs
            if name == "big" and "custom/big" not in runs[-1][2]:
                raise RuntimeError("the dry run did not plan the custom task")
    load = os.getloadavg()[0]
    return [
        row("dag_build_time_100k_files", min(walls["big"]), "< 10", "s",
            f"snakemake -n, config/paper.yaml + custom/big ({files} empty files, {CLASSES} classes): "
            f"{walls['big_jobs']} jobs; runs {', '.join(f'{t:.1f}' for t in walls['big'])} s; load {load:.1f}"),
        row("dag_build_cpu_100k_files", walls["big_cpu"], "-", "s", "user + system time of that dry run"),
        row("dag_build_time_paper", min(walls["alone"]), "-", "s",
            f"the same without custom/big: {walls['alone_jobs']} jobs; user + system {walls['alone_cpu']:.1f} s"),
        row("custom_fingerprint_100k_files", fp, "-", "s",
            f"esta.vit.fingerprint.fingerprint, one stat per folder; a stat per file (before): {per_file:.2f} s"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    for r in bench_dag(args.files, args.repeats):
        print(f"{r.benchmark} {r.value:.3g} {r.unit} target {r.target} {'met' if r.met else 'MISSED'}: {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
