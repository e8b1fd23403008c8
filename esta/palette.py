"""The palette: what a user deploys from one ESTA (or SN-Net) run (spec §12; ESTA §1 "a palette of
fine-tuned models that adhere to diverse resource constraints"; SN-Net's ``reset_stitch_id``).

A palette is one folder per (method, variant, task, seed):

- ``tensors.safetensors``: the task-specific tensors only. PST: the shared LoRA, the stitch biases,
  the LS-initialised stitching layers and the heads; SN-Net: its fine-tuned anchors and stitching
  layers (it has nothing smaller to store). Keys are the trained model's parameter names.
- ``stitches.csv``: every stitch with ``gmacs``, ``params``, measured ``latency_ms_b1`` /
  ``latency_ms_b32`` (deployed stitches), deployment ``score``, ``test_accuracy``, ``deployed``,
  ``dominated`` (empty where the run did not say) and the deployment ``interval``.
- ``palette.json``: format, family kind (``vit`` / ``llm``) and shape, method and settings, the task's
  classes and eval transform (ViT) or tokenizer (LLM), and the anchors it needs by name and sha256.
  Anchors are shared by every task and are not copied unless bundled (``bundle``: ``anchors/``).

``Palette.load`` checks the anchors against their sha256 and builds the stitched model once;
``select`` only changes which stitch id the forward is given (no weight is touched, nothing is read).
This module is the family-agnostic part and imports no family at import time: the family code
(``esta.vit.palette``, ``esta.llm.palette``) is imported when a palette of that kind is loaded.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from esta.runtime import file_digest

__all__ = ["Palette", "PaletteError", "FORMAT", "META", "TENSORS", "TABLE", "BUNDLE", "anchor_record",
           "check_anchors", "resolve_anchors", "write_palette", "bundle", "choose", "stitch_table",
           "median_ms", "measure_latency", "storage_row", "folder_bytes", "describe", "TABLE_COLUMNS"]

FORMAT = "esta-palette/1"
META, TENSORS, TABLE, BUNDLE = "palette.json", "tensors.safetensors", "stitches.csv", "anchors"
TABLE_COLUMNS = ["stitch_id", "name", "gmacs", "params", "latency_ms_b1", "latency_ms_b32", "score",
                 "test_accuracy", "deployed", "dominated", "interval"]
_FAMILIES = {"vit": "esta.vit.palette", "llm": "esta.llm.palette"}


class PaletteError(ValueError):
    """A palette, an anchor, a budget or an input that cannot be used; the message names it."""


# ---------------------------------------------------------------------------------------------
# Anchors by name and sha256


def anchor_record(name: str, path: str | Path, relative_to: str | Path) -> dict:
    """``{name, path, files}`` of one anchor: a weight file, or a folder (an HF model) whose weight
    and config files are listed; each file with its sha256 and bytes. ``path`` is stored relative to
    ``relative_to`` (the palette's folder), so results/ can be moved as a whole."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in (".safetensors", ".json") and "token" not in f.name)
    else:
        files = [path]
    listed = {f.name: dict(sha256=file_digest(f), bytes=f.stat().st_size) for f in files}
    return dict(name=name, path=os.path.relpath(path, relative_to), folder=path.is_dir(), files=listed)


def check_anchors(records: list[dict], paths: list[Path]) -> None:
    """Every file of every anchor has the sha256 the palette lists, or an error naming it."""
    for rec, path in zip(records, paths, strict=True):
        for fname, want in rec["files"].items():
            f = path / fname if rec["folder"] else path
            if not f.is_file():
                raise PaletteError(f"anchor {rec['name']}: {f} is missing (the palette lists {fname})")
            got = file_digest(f)
            if got != want["sha256"]:
                raise PaletteError(f"anchor {rec['name']}: {f} has sha256 {got}, the palette was trained on "
                                   f"{want['sha256']}: another file, not this palette's anchor")


def resolve_anchors(folder: Path, records: list[dict], anchors=None) -> list[Path]:
    """Where each anchor of a palette is: ``anchors`` (a list in the palette's order, a dict by name, or
    a folder holding them by file name), else the bundled copy, else the path recorded at build time.
    Every one is checked against its sha256."""
    if isinstance(anchors, list | tuple):
        if len(anchors) != len(records):
            raise PaletteError(f"{len(anchors)} anchors given, the palette needs {len(records)}: "
                               f"{[r['name'] for r in records]}")
        paths = [Path(a) for a in anchors]
    else:
        paths = []
        for rec in records:
            stored = Path(rec["path"])
            if isinstance(anchors, dict):
                if rec["name"] not in anchors:
                    raise PaletteError(f"anchor {rec['name']} not given; anchors by name: {sorted(anchors)}")
                paths.append(Path(anchors[rec["name"]]))
            elif anchors is not None:
                paths.append(Path(anchors) / stored.name)
            elif (folder / BUNDLE / stored.name).exists():
                paths.append(folder / BUNDLE / stored.name)
            else:
                paths.append(folder / stored)
    check_anchors(records, paths)
    return paths


def bundle(folder: str | Path, anchors=None) -> list[Path]:
    """Copy the palette's anchors (checked by sha256) into ``<folder>/anchors/``: a self-contained folder."""
    folder = Path(folder)
    meta = read_meta(folder)
    paths = resolve_anchors(folder, meta["anchors"], anchors)
    out = []
    for src in paths:
        dest = folder / BUNDLE / src.name
        if dest.resolve() != src.resolve():
            tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
            dest.parent.mkdir(exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, tmp)
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        out.append(dest)
    return out


# ---------------------------------------------------------------------------------------------
# Writing and reading the folder


def write_palette(folder: str | Path, tensors: dict, meta: dict, table: pd.DataFrame,
                  extra: Callable[[Path], None] | None = None) -> Path:
    """Write a palette folder atomically (beside it, then renamed): tensors, table, metadata, and
    whatever ``extra(tmp_folder)`` adds (the LLM tokenizer)."""
    from esta.tensors import save_tensors

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(tensors, tmp / TENSORS, dict(format=FORMAT, kind=meta["kind"], method=meta["method"]))
    table[TABLE_COLUMNS + [c for c in table.columns if c not in TABLE_COLUMNS]].to_csv(tmp / TABLE, index=False)
    meta = dict(meta, format=FORMAT, params=sum(t.numel() for t in tensors.values()))
    if extra is not None:
        extra(tmp)
    (tmp / META).write_text(json.dumps(meta, indent=1, default=str) + "\n")  # last: complete folders only
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def read_meta(folder: Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise PaletteError(f"{folder} is not a palette: {META} is missing (expected {META}, {TENSORS}, {TABLE})")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise PaletteError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    return meta


def read_table(folder: str | Path) -> pd.DataFrame:
    """A palette's stitch table (``interval`` as a nullable int: empty for stitches not deployed)."""
    table = pd.read_csv(Path(folder) / TABLE)
    return table.astype({"interval": "Int64"})


def stitch_table(stitches: pd.DataFrame, deployed: pd.DataFrame, latency: pd.DataFrame | None = None,
                 test: pd.DataFrame | None = None) -> pd.DataFrame:
    """The palette's table: ``stitches`` (stitch_id, name, gmacs, params) joined with the deployed rows
    (score, interval, and ``dominated`` where the run wrote it: otherwise left empty), latency in long
    form (stitch_id, batch, median_ms) and test accuracy (stitch_id, test_accuracy)."""
    t = stitches[["stitch_id", "name", "gmacs", "params"]].copy()
    dep = deployed.set_index("stitch_id")
    t["deployed"] = t["stitch_id"].isin(dep.index)
    for col in ("score", "interval", "dominated", "score_name", "reason"):
        t[col] = t["stitch_id"].map(dep[col]) if col in dep else float("nan")
    for b in (1, 32):
        rows = pd.Series(dtype=float) if latency is None else latency[latency["batch"] == b].set_index("stitch_id")
        t[f"latency_ms_b{b}"] = t["stitch_id"].map(rows["median_ms"]) if len(rows) else float("nan")
    acc = pd.Series(dtype=float) if test is None else test.set_index("stitch_id")["test_accuracy"]
    t["test_accuracy"] = t["stitch_id"].map(acc).astype(float)
    t["interval"] = t["interval"].astype("Int64")  # empty for stitches not deployed
    return t[TABLE_COLUMNS + ["score_name", "reason"]]


def folder_bytes(path: str | Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---------------------------------------------------------------------------------------------
# Choosing a stitch


_BUDGETS = {"max_gmacs": "gmacs", "max_latency_ms": "latency_ms_b1", "max_params": "params"}


def choose(table: pd.DataFrame, stitch_id: int | None = None, **budgets: float | None) -> int:
    """The stitch a palette runs: ``stitch_id`` (any stitch of the table), or under budgets
    (``max_gmacs``, ``max_latency_ms`` at batch 1, ``max_params``) the most expensive deployed stitch
    that fits them all and that the run did not mark dominated; with neither, the most expensive
    deployed stitch. An unknown id or a budget below every deployed stitch is an error naming it."""
    unknown = set(budgets) - set(_BUDGETS)
    if unknown:
        raise TypeError(f"unknown budget {sorted(unknown)}; known: {sorted(_BUDGETS)}")
    given = {k: v for k, v in budgets.items() if v is not None}
    if stitch_id is not None:
        if given:
            raise PaletteError(f"give a stitch id or budgets {sorted(given)}, not both")
        if int(stitch_id) not in set(table["stitch_id"]):
            ids = table["stitch_id"]
            raise PaletteError(f"unknown stitch id {stitch_id}: this palette holds ids {ids.min()}..{ids.max()}")
        return int(stitch_id)
    cand = table[table["deployed"].astype(bool)]
    for key, value in given.items():
        col = _BUDGETS[key]
        if cand[col].isna().all():
            raise PaletteError(f"{key}: the palette has no {col} for its deployed stitches (not measured)")
        fits = cand[cand[col] <= value]
        if fits.empty:
            cheapest = cand.loc[cand[col].idxmin()]
            raise PaletteError(f"{key} = {value:g} is below the cheapest deployed stitch "
                               f"(id {int(cheapest['stitch_id'])}, {col} {cheapest[col]:g})")
        cand = fits
    kept = cand[cand["dominated"].astype(str).str.lower() != "true"]
    cand = kept if len(kept) else cand
    return int(cand.sort_values(["gmacs", "stitch_id"]).iloc[-1]["stitch_id"])


def median_ms(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` calls
    that are not timed."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_latency(run: Callable[[int, object], object], inputs: dict[int, object], stitch_ids: list[int],
                    repeats: int, warmup: int) -> pd.DataFrame:
    """Latency of each stitch at each batch size: ``run(stitch_id, inputs[batch])`` timed by
    ``median_ms``. Columns stitch_id, batch, median_ms, repeats, warmup."""
    rows = [dict(stitch_id=int(sid), batch=b, median_ms=median_ms(lambda: run(int(sid), x), repeats, warmup),
                 repeats=repeats, warmup=warmup) for sid in stitch_ids for b, x in inputs.items()]
    return pd.DataFrame(rows)


def storage_row(palette: str | Path, exports: str | Path | None, anchors: list[str | Path]) -> dict:
    """Bytes one task costs on disk: its palette (bundled anchors left out), its standalone exports and
    the shared anchors it names (``anchors``: the files or folders; none for SN-Net)."""
    palette = Path(palette)
    meta = read_meta(palette)
    bundled = folder_bytes(palette / BUNDLE) if (palette / BUNDLE).exists() else 0
    n_exports = float("nan")
    if exports is not None:
        n_exports = sum(1 for f in Path(exports).rglob("*") if f.name in ("model.safetensors",) or
                        (f.suffix == ".safetensors" and f.name.startswith("stitch_")))
    return dict(kind=meta["kind"], palette_params=meta["params"],
                palette_bytes=folder_bytes(palette) - bundled, tensors_bytes=folder_bytes(palette / TENSORS),
                exports_bytes=folder_bytes(exports) if exports is not None else float("nan"), n_exports=n_exports,
                anchors_bytes=sum(folder_bytes(a) for a in anchors), n_stitches=len(pd.read_csv(palette / TABLE)))


# ---------------------------------------------------------------------------------------------
# The palette


def family_module(kind: str):
    """The family's palette code (imported here, when a palette of that kind is used)."""
    if kind not in _FAMILIES:
        raise PaletteError(f"unknown palette kind {kind!r}; known: {sorted(_FAMILIES)}")
    return importlib.import_module(_FAMILIES[kind])


class Palette:
    """A loaded palette: one stitched model and the stitch it currently runs.

    ``Palette.load(path)`` builds the model once; ``select`` switches the stitch (an int, nothing
    else); ``predict`` (ViT) / ``generate`` (LLM) run it; ``export`` writes the standalone model of
    one stitch exactly as the workflow's export rules do."""

    def __init__(self, folder: Path, meta: dict, table: pd.DataFrame, model, family):
        self.path, self.meta, self.table, self.model, self._family = Path(folder), meta, table, model, family
        self.stitch_id = choose(table)

    @classmethod
    def load(cls, path: str | Path, anchors=None, device: str = "cpu") -> Palette:
        """Check the anchors against their sha256 (``anchors``: see ``resolve_anchors``) and build the
        stitched model with the palette's tensors, in eval mode."""
        folder = Path(path)
        meta = read_meta(folder)
        family = family_module(meta["kind"])
        paths = resolve_anchors(folder, meta["anchors"], anchors)
        table = read_table(folder)
        model = family.load_model(folder, meta, paths, device)
        return cls(folder, meta, table, model.eval(), family)

    def select(self, max_gmacs: float | None = None, max_latency_ms: float | None = None,
               stitch_id: int | None = None, max_params: float | None = None) -> Palette:
        """Switch the active stitch (``choose``); returns the palette. No weight changes, nothing is read."""
        self.stitch_id = choose(self.table, stitch_id, max_gmacs=max_gmacs, max_latency_ms=max_latency_ms,
                                max_params=max_params)
        return self

    @property
    def row(self) -> pd.Series:
        """The table row of the active stitch."""
        return self.table.set_index("stitch_id").loc[self.stitch_id]

    def __call__(self, *inputs, **kw):
        """The active stitch's output (logits) for prepared inputs: images (B, 3, S, S) for a ViT
        palette, ``(input_ids, attention_mask)`` for an LLM palette."""
        return self._family.forward(self.model, self.stitch_id, *inputs, **kw)

    def predict(self, images, batch_size: int = 32) -> pd.DataFrame:
        """Top-1 class of each image (paths, PIL images or image tensors), through the task's own eval
        transform, in batches: columns image, class_index, class, probability, stitch_id."""
        if not hasattr(self._family, "predict"):
            raise PaletteError(f"a {self.meta['kind']} palette does not classify images; use generate")
        return self._family.predict(self, images, batch_size)

    def generate(self, prompts: list[str] | str, max_new_tokens: int = 32, template: bool = True) -> list[str]:
        """Greedy answers of the active stitch (LLM palettes; ``template``: the Alpaca prompt it was tuned on)."""
        if not hasattr(self._family, "generate"):
            raise PaletteError(f"a {self.meta['kind']} palette does not generate text; use predict")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self._family.generate(self, prompts, max_new_tokens, template)

    def export(self, stitch_id: int, out_dir: str | Path) -> Path:
        """The standalone model of ``stitch_id`` (LoRA merged, biases baked in), as the workflow exports it."""
        sid = choose(self.table, stitch_id)
        return self._family.export(self, sid, Path(out_dir))

    def __repr__(self) -> str:
        r = self.row
        return (f"Palette({self.meta['kind']} {self.meta['method']} {self.meta.get('task', '')}: "
                f"{len(self.table)} stitches, {int(self.table['deployed'].sum())} deployed; stitch {self.stitch_id}, "
                f"{r['gmacs']:.4g} GMACs, {int(r['params']):,} params)")


def describe(path: str | Path) -> str:
    """A palette's summary line and stitch table, read without building its model."""
    folder = Path(path)
    meta = read_meta(folder)
    table = read_table(folder)
    anchors = ", ".join(f"{a['name']} ({a['path']})" for a in meta["anchors"]) or "none (it holds its own)"
    head = (f"{meta['kind']} palette, {meta['method']} {meta.get('variant', '')} {meta.get('task', '')} seed "
            f"{meta.get('seed')}: {len(table)} stitches, {int(table['deployed'].sum())} deployed, "
            f"{meta['params']:,} task parameters; anchors: {anchors}")
    return head + "\n" + table[TABLE_COLUMNS].to_string(index=False, na_rep="")
