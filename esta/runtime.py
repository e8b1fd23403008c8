"""Run-time plumbing shared by the workflow scripts: logging, threads, device, provenance and
atomic writes (STYLE: artifacts describe themselves; outputs are written atomically)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import resource
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:  # torch is imported where it is used: table and plot jobs never need it
    import torch

__all__ = [
    "start_job",
    "start",
    "provenance",
    "peak_rss_mb",
    "write_json",
    "write_csv",
    "atomic_path",
]


_usage_registered = False
USAGE = "job usage "  # the prefix of the last line a job writes to its log (see read_benchmarks)


def start(log_file: str | Path | None, threads: int) -> logging.Logger:
    """Send warnings, tqdm and logging of a workflow job to its log file and size torch's threads.

    ``threads`` is the rule's ``threads:``; torch never gets more threads than the machine has, so
    a ``--cores`` larger than the machine does not oversubscribe inside a job.
    """
    if log_file is not None:
        stream = open(log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the job
        sys.stderr = stream
    n = max(1, min(int(threads), os.cpu_count() or 1))
    if "torch" in sys.modules:  # model jobs import it before starting; table jobs never do
        sys.modules["torch"].set_num_threads(n)
    else:  # read by torch (OpenMP, MKL) if something imports it later
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    log = logging.getLogger("esta")
    log.info("torch threads: %d", n)
    global _usage_registered
    if log_file is not None and not _usage_registered:  # once per process, however often started
        atexit.register(_log_usage, log)
        _usage_registered = True
    return log


def _log_usage(log: logging.Logger) -> None:
    """The job's exact peak memory, from the kernel (``peak_rss_mb``), as the last line of its log:
    Snakemake's ``benchmark:`` samples memory every 0.5-30 s and misses short jobs and late peaks."""
    log.info("%s%s", USAGE, json.dumps(dict(peak_rss_mb=round(peak_rss_mb(), 2))))


def start_job(smk) -> logging.Logger:
    """``start`` for a Snakemake script job: its log file, and the torch threads the rule asks for
    (``params.torch_threads``; light rules run one thread)."""
    threads = smk.params.get("torch_threads", 1)
    return start(smk.log[0] if smk.log else None, threads)


# The field's libraries a job may run on; provenance records those the job really imported.
LIBRARIES = ("timm", "transformers", "tokenizers", "peft", "safetensors", "lm_eval", "datasets")


def provenance(device: torch.device | str | None = None) -> dict:
    """Library versions, device and dtype: recorded in every metrics file and checkpoint. The
    libraries are those this process imported (timm for a ViT job, transformers and tokenizers for
    an LLM job), so a record names what really made the artifact."""
    from importlib.metadata import version  # not `import peft`: that costs seconds (transformers)

    import torch

    device = torch.device(device or "cpu")
    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        **{lib: version(lib.replace("_", "-")) for lib in LIBRARIES if lib in sys.modules},
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        dtype="bfloat16-autocast,tf32" if device.type == "cuda" else "float32",
        torch_threads=torch.get_num_threads(),
    )
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB: the kernel's high-water mark of the process's
    own address space (``VmHWM``). ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a job started
    by a large process (Snakemake, pytest) would report its parent's size; it serves where there is
    no ``/proc`` (macOS reports bytes, Linux KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def atomic_path(path: str | Path) -> Path:
    """A temporary sibling of ``path`` to write to before ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json(path: str | Path, obj) -> None:
    tmp = atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    tmp = atomic_path(path)
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (inputs that key a training checkpoint)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def logged_peak_rss_mb(log_file: str | Path) -> float:
    """The peak RSS (MiB) a job wrote as the last usage line of its log (``start``); NaN when the
    log is missing or has none (a job that did not run our code, or was killed)."""
    path = Path(log_file)
    if not path.is_file():
        return float("nan")
    lines = [line for line in path.read_text(errors="replace").splitlines() if USAGE in line]
    return json.loads(lines[-1].split(USAGE, 1)[1])["peak_rss_mb"] if lines else float("nan")


def read_benchmarks(files) -> pd.DataFrame:
    """Snakemake ``benchmark:`` files as one table, each row tagged with its ``rule`` and ``job`` (the
    path below ``benchmarks/``: ``<rule>/<job wildcards...>``), the lead columns first.

    ``peak_rss_mb`` is the exact peak the job logged at exit, read from its log at the mirrored path
    (``benchmarks/<rule>/<job>.tsv`` -> ``logs/<rule>/<job>.log``); Snakemake's sampled ``max_rss``
    stands in where a job logged none."""
    frames = []
    for f in files:
        parts = Path(f).with_suffix("").parts
        i = parts.index("benchmarks")
        rel = parts[i + 1 :]
        log_file = Path(*parts[:i], "logs", *rel[:-1], rel[-1] + ".log")
        frame = pd.read_csv(f, sep="\t").assign(rule=rel[0], job="/".join(rel[1:]))
        frames.append(frame.assign(peak_rss_mb=logged_peak_rss_mb(log_file)))
    df = pd.concat(frames, ignore_index=True)
    df["peak_rss_mb"] = df["peak_rss_mb"].fillna(df["max_rss"])
    lead = ["rule", "job", "s", "peak_rss_mb", "max_rss", "cpu_time"]
    return df[lead + [c for c in df.columns if c not in lead]]


def shipped_folder(assets: str | Path, family_name: str, manifest: str, what: str, layout: str,
                   source_key: str) -> Path:
    """The folder of a family's anchors shipped under ``assets``, or an error naming the manifest it
    looked for, the ``layout`` expected beside it, the families shipped, and the config key
    (``source_key: pretrain``) that trains them instead."""
    assets = Path(assets)
    folder = assets / family_name
    if not (folder / manifest).is_file():
        known = sorted(m.parent.name for m in assets.glob(f"*/{manifest}"))
        raise FileNotFoundError(
            f"no shipped {what} for family {family_name!r}: {folder / manifest} is missing (expected {manifest} "
            f"with {layout} beside it); families shipped: {known}. Use {source_key}: pretrain to train them."
        )
    return folder


def ship_folder(dest: str | Path, sources: list, infos: list, what: str) -> Path:
    """The folder ``dest`` that shipped anchors are written to (created), after checking that every
    source (``what``: weight file, HF folder) has its info record."""
    if len(sources) != len(infos) or not sources:
        raise ValueError(f"ship needs one info record per {what}, got {len(sources)} and {len(infos)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return dest


def read_listing(folder: str | Path, name: str) -> tuple[Path, dict]:
    """The path and JSON of the manifest ``name`` of a shipped folder, or an error naming it."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"shipped anchors manifest {path} is missing")
    return path, json.loads(path.read_text())


def check_listed(path: str | Path, sha256: str, size: int, manifest: str | Path) -> None:
    """That the file ``path`` exists and has the sha256 and size ``manifest`` lists for it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{manifest} lists {path.name}, which is missing from {path.parent}")
    got_size, digest = path.stat().st_size, file_digest(path)
    if got_size != size or digest != sha256:
        raise ValueError(f"{path} does not match {manifest}: sha256 {digest} ({got_size} bytes), manifest says "
                         f"{sha256} ({size} bytes)")


def peak_device_mb(device: torch.device) -> float | None:
    """Peak CUDA memory allocated by torch in MiB; None on CPU (see peak_rss_mb)."""
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20
