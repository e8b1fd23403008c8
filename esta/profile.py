"""Latency of a palette's stitches on *this* machine (spec §12 "measured latency"; issue 30 item 7;
once-for-all's users ask for latency measured on their own hardware).

``profile(palette)`` times every deployed stitch of a loaded palette at batch 1 and 32: the median
wall time of ``repeats`` calls after ``warmup`` untimed ones, with the torch thread count (and the ONNX
Runtime intra-op thread count) stated in every row. Runtime ``torch`` runs the palette itself (the
served path: ``select``, then the forward); ``onnxruntime`` runs each stitch's ONNX export (families
that have one). ``write_latency`` puts one runtime's numbers into the palette's latency columns and
re-records the table's sha256, so ``--max-latency-ms`` selects by what this machine measured.
``python -m esta profile`` and the workflow's ``palette_latency`` rule run it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from esta import runtime, trust
from esta.palette import META, TABLE, Palette, PaletteError

__all__ = ["median_ms", "profile", "write_latency", "profile_folder", "RUNTIMES"]

RUNTIMES = ("torch", "onnxruntime")


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` calls
    that are not timed (``sync`` waits for an accelerator before each clock read)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _onnx_runner(palette: Palette, sid: int, folder: Path, threads: int):
    import onnxruntime as ort

    path = palette.export(sid, folder, format="onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    providers = ["CUDAExecutionProvider"] if palette.device.type == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), opts, providers=providers)
    return lambda x: session.run(None, {"images": x.cpu().numpy()})


def profile(palette: Palette, batches: tuple[int, ...] = (1, 32), runtimes: tuple[str, ...] = ("torch",),
            repeats: int = 10, warmup: int = 2, stitch_ids: list[int] | None = None, **inputs_kw) -> pd.DataFrame:
    """Latency of every deployed stitch (or ``stitch_ids``) of ``palette`` at each batch size under
    each runtime: columns stitch_id, runtime, batch, median_ms, repeats, warmup, threads, device
    (and ``runtime.provenance``'s versions). ``inputs_kw`` go to the family's ``example_inputs``
    (``seq_len`` for an LLM palette)."""
    bad = set(runtimes) - set(RUNTIMES)
    if bad:
        raise PaletteError(f"unknown runtime {sorted(bad)}; known: {list(RUNTIMES)}")
    if "onnxruntime" in runtimes and not hasattr(palette._family, "export_onnx"):
        raise PaletteError(f"runtime onnxruntime: a {palette.meta['kind']} palette has no ONNX export")
    ids = stitch_ids if stitch_ids is not None else palette.table.loc[palette.table["deployed"], "stitch_id"].tolist()
    device = palette.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)  # latency does not depend on the values
    xs = {b: palette._family.example_inputs(palette, b, gen, **inputs_kw) for b in batches}
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sid in map(int, ids):
            for rt in runtimes:
                if rt == "torch":
                    palette.select(stitch_id=sid)
                    run = lambda x: palette(*x)  # noqa: E731
                    args = {b: tuple(t.to(device) for t in x) for b, x in xs.items()}
                else:
                    run, args = _onnx_runner(palette, sid, Path(tmp), threads), {b: x[0] for b, x in xs.items()}
                with torch.inference_mode():
                    for b in batches:
                        ms = median_ms(lambda: run(args[b]), repeats, warmup, sync)
                        rows.append(dict(stitch_id=sid, runtime=rt, batch=b, median_ms=ms, repeats=repeats,
                                         warmup=warmup, threads=threads))
    return pd.DataFrame(rows).assign(**runtime.provenance(device))


def write_latency(folder: str | Path, latency: pd.DataFrame, runtime_name: str = "torch") -> None:
    """Put ``runtime_name``'s batch-1 and batch-32 medians of ``latency`` into the palette's
    ``latency_ms_b1`` / ``latency_ms_b32`` columns (stitches it does not cover are left empty), record
    how they were measured in ``palette.json`` (``latency``) and re-record the table's sha256."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    table = pd.read_csv(folder / TABLE)
    rows = latency[latency["runtime"] == runtime_name]
    for b in (1, 32):
        per = rows[rows["batch"] == b].set_index("stitch_id")["median_ms"]
        table[f"latency_ms_b{b}"] = table["stitch_id"].map(per)
    first = rows.iloc[0] if len(rows) else {}
    meta["latency"] = dict(runtime=runtime_name, threads=int(first.get("threads", 0)), device=str(first.get("device", "")),
                           device_name=str(first.get("device_name", "")), repeats=int(first.get("repeats", 0)),
                           statistic="median after warm-up", date=time.strftime("%Y-%m-%d"))
    runtime.write_csv(table, folder / TABLE)
    meta["files"][TABLE] = trust.file_records(folder, [TABLE])[TABLE]
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=str) + "\n")
    tmp.replace(folder / META)


def profile_folder(src: str | Path, dest: str | Path, family, repeats: int, warmup: int,
                   seq_len: int = 64) -> pd.DataFrame:
    """The workflow's ``palette_latency``: ``src`` hard-linked into a folder beside ``dest`` (no copy of
    bundled anchors), loaded as a user loads it (``family``: its palette module), every deployed stitch
    profiled under torch and the latency columns written; then renamed to ``dest``. Returns the
    latency table."""
    import os
    import shutil

    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=os.link)
    palette = Palette.load(tmp, family)
    table = profile(palette, repeats=repeats, warmup=warmup, seq_len=seq_len)
    write_latency(tmp, table)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return table
