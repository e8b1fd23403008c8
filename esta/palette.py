"""The palette: what a user deploys from one ESTA (or SN-Net) run (spec §12; ESTA §1 "a palette of
fine-tuned models that adhere to diverse resource constraints"; SN-Net's ``reset_stitch_id``).

A palette is one folder per (method, variant, task, seed):

- ``tensors.safetensors``: the task-specific tensors only (``task_tensors``). PST: the shared LoRA, the
  stitch biases, the LS-initialised stitching layers and the heads; SN-Net: its fine-tuned anchors and
  stitching layers (it has nothing smaller to store). Keys are the trained model's parameter names.
- ``stitches.csv``: every stitch with ``gmacs``, ``params``, measured ``latency_ms_b1`` /
  ``latency_ms_b32`` (deployed stitches), the measured ``accuracy`` and its split (``accuracy_split``:
  selection where the run measured it, else test), ``test_accuracy``, the training-time ``score``,
  ``deployed``, ``dominated`` (on the measured accuracy), ``score_dominated`` (the run's view from its
  score, empty where it did not say) and the deployment ``interval``.
- ``palette.json``: format, family kind and shape, method and settings, the sha256 of every file above,
  and the anchors it needs by name and sha256 (``esta.trust``). Anchors are shared by every task and
  are not copied unless bundled (``bundle``: ``anchors/<record name>``).

``Palette.load(path, family)`` validates and checks everything (``esta.trust``), builds the stitched
model once and readies it for serving (the family's ``for_inference``: shared adapters merged); ``select``
then copies only the active stitch's own biases in place. The family (``esta.vit.palette``,
``esta.llm.palette``) is passed in by whoever knows it -- its own ``load``, the command line -- so this
module names none.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pandas as pd

from esta import trust
from esta.trust import PaletteError, anchor_record

__all__ = ["Palette", "PaletteError", "FORMAT", "META", "TENSORS", "TABLE", "BUNDLE", "anchor_record",
           "resolve_anchors", "write_palette", "read_meta", "read_table", "bundle", "choose", "stitch_table",
           "task_tensors", "storage_row", "folder_bytes", "describe", "TABLE_COLUMNS"]

FORMAT = "esta-palette/2"
META, TENSORS, TABLE, BUNDLE = "palette.json", "tensors.safetensors", "stitches.csv", "anchors"
TABLE_COLUMNS = ["stitch_id", "name", "gmacs", "params", "latency_ms_b1", "latency_ms_b32", "accuracy",
                 "accuracy_split", "test_accuracy", "score", "deployed", "dominated", "score_dominated", "interval"]


def task_tensors(model) -> dict:
    """The task-specific tensors of a trained stitched model (any family) by parameter name: everything
    that trains, plus the stitching layers' own weights and biases (LS-fitted on the task, frozen under
    PST; their adapters train, so they are in either way)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad or n.startswith("net.stitch_layers.")}


# ---------------------------------------------------------------------------------------------
# Anchors


def resolve_anchors(folder: Path, records: list[dict], anchors=None, verify: bool = False) -> list[Path]:
    """Where each anchor of a palette is: ``anchors`` (a list in the palette's order, a dict by name, or
    a folder holding them under their recorded file names), else the bundled copy
    (``anchors/<record name>``), else the path recorded at build time. Every file is checked against
    its sha256 (``esta.trust.check_anchors``)."""
    if isinstance(anchors, list | tuple):
        if len(anchors) != len(records):
            raise PaletteError(f"{len(anchors)} anchors given, the palette needs {len(records)}: "
                               f"{[r['name'] for r in records]}")
        paths = [Path(a) for a in anchors]
    else:
        paths = []
        for rec in records:
            if isinstance(anchors, dict):
                if rec["name"] not in anchors:
                    raise PaletteError(f"anchor {rec['name']} not given; anchors by name: {sorted(anchors)}")
                paths.append(Path(anchors[rec["name"]]))
            elif anchors is not None:
                paths.append(Path(anchors) / Path(rec["path"]).name)
            elif (folder / BUNDLE / trust.bundled_name(rec)).exists():
                paths.append(folder / BUNDLE / trust.bundled_name(rec))
            else:
                paths.append(folder / rec["path"])
    trust.check_anchors(records, paths, verify)
    return paths


def bundle(folder: str | Path, anchors=None) -> list[Path]:
    """Copy the palette's anchors (checked by sha256) into ``<folder>/anchors/<record name>``: a
    self-contained folder. Record names are unique plain names (the schema), so no two copies collide."""
    folder = Path(folder)
    meta = read_meta(folder)
    paths = resolve_anchors(folder, meta["anchors"], anchors)
    out = []
    for rec, src in zip(meta["anchors"], paths):
        dest = folder / BUNDLE / trust.bundled_name(rec)
        if not dest.exists() or dest.resolve() != src.resolve():
            trust.copy_anchor(src, dest)
        out.append(dest)
    return out


# ---------------------------------------------------------------------------------------------
# Writing and reading the folder


def write_palette(folder: str | Path, tensors: dict, meta: dict, table: pd.DataFrame,
                  extra: Callable[[Path], list[str]] | None = None) -> Path:
    """Write a palette folder atomically (beside it, then renamed): tensors, table, whatever
    ``extra(tmp_folder)`` adds (the LLM tokenizer; it returns the relative names it wrote) and last the
    metadata with the sha256 of every one of those files."""
    from esta.tensors import save_tensors

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_tensors(tensors, tmp / TENSORS, dict(format=FORMAT, kind=meta["kind"], method=meta["method"]))
    table[TABLE_COLUMNS + [c for c in table.columns if c not in TABLE_COLUMNS]].to_csv(tmp / TABLE, index=False)
    names = [TENSORS, TABLE] + (extra(tmp) if extra is not None else [])
    meta = dict(meta, format=FORMAT, params=sum(t.numel() for t in tensors.values()),
                files=trust.file_records(tmp, names))
    (tmp / META).write_text(json.dumps(meta, indent=1, default=str) + "\n")  # last: complete folders only
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def read_meta(folder: str | Path) -> dict:
    """``palette.json``, validated against the package's schema (``esta.trust.validate``)."""
    path = Path(folder) / META
    if not path.is_file():
        raise PaletteError(f"{folder} is not a palette: {META} is missing (expected {META}, {TENSORS}, {TABLE})")
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise PaletteError(f"{path}: not valid JSON ({err})") from err
    if isinstance(meta, dict) and meta.get("format") != FORMAT:
        raise PaletteError(f"{path}: field format: {meta.get('format')!r} is not {FORMAT!r}")
    trust.validate(meta, trust.SCHEMA, path)
    return meta


def read_table(folder: str | Path, meta: dict | None = None, verify: bool = False) -> pd.DataFrame:
    """A palette's stitch table (``interval`` as a nullable int: empty for stitches not deployed),
    checked against its sha256 first when ``meta`` is given."""
    folder = Path(folder)
    if meta is not None:
        trust.check_files({TABLE: meta["files"][TABLE]}, folder, f"{META} files/{TABLE}", verify)
    table = pd.read_csv(folder / TABLE)
    missing = sorted(set(TABLE_COLUMNS) - set(table.columns))
    if missing:
        raise PaletteError(f"{folder / TABLE}: columns {missing} are missing")
    return table.astype({"interval": "Int64", "deployed": bool})


def dominated(table: pd.DataFrame, value: str, cost: str = "gmacs") -> pd.Series:
    """Per deployed stitch, whether another deployed stitch costs no more and has at least ``value``
    (strictly better in one); empty (NA) where ``value`` was not measured or the stitch not deployed."""
    dep = table[table["deployed"] & table[value].notna()]
    out = pd.Series(pd.NA, index=table.index, dtype="boolean")
    for i, r in dep.iterrows():
        better = (dep[cost] <= r[cost]) & (dep[value] >= r[value]) & ((dep[cost] < r[cost]) | (dep[value] > r[value]))
        out[i] = bool(better.any())
    return out


def stitch_table(stitches: pd.DataFrame, deployed: pd.DataFrame, latency: pd.DataFrame | None = None,
                 test: pd.DataFrame | None = None, selection: pd.DataFrame | None = None) -> pd.DataFrame:
    """The palette's table: ``stitches`` (stitch_id, name, gmacs, params) joined with the deployed rows
    (score, interval, and ``score_dominated`` from the run's ``dominated`` where it wrote it), latency in
    long form (stitch_id, batch, median_ms), test accuracy and selection-split accuracy (stitch_id,
    test_accuracy / selection_accuracy: ``evaluate_stitches``' tables). ``accuracy`` is the selection split's where measured, else the test
    split's (``accuracy_split`` says which); ``dominated`` is computed on it."""
    t = stitches[["stitch_id", "name", "gmacs", "params"]].copy()
    dep = deployed.set_index("stitch_id")
    t["deployed"] = t["stitch_id"].isin(dep.index)
    for col, src in (("score", "score"), ("interval", "interval"), ("score_dominated", "dominated"),
                     ("score_name", "score_name"), ("reason", "reason")):
        t[col] = t["stitch_id"].map(dep[src]) if src in dep else float("nan")
    for b in (1, 32):
        rows = pd.Series(dtype=float) if latency is None else latency[latency["batch"] == b].set_index("stitch_id")
        t[f"latency_ms_b{b}"] = t["stitch_id"].map(rows["median_ms"]) if len(rows) else float("nan")
    acc = pd.Series(dtype=float) if test is None else test.set_index("stitch_id")["test_accuracy"]
    t["test_accuracy"] = t["stitch_id"].map(acc).astype(float)
    sel = pd.Series(dtype=float) if selection is None else selection.set_index("stitch_id")["selection_accuracy"]
    on_sel = t["stitch_id"].map(sel).astype(float)
    t["accuracy"] = on_sel.fillna(t["test_accuracy"])
    t["accuracy_split"] = on_sel.notna().map({True: "selection", False: "test"}).where(t["accuracy"].notna(), "")
    t["dominated"] = dominated(t, "accuracy")
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
    (``max_gmacs``, ``max_latency_ms`` at batch 1, ``max_params``) the deployed stitch with the highest
    *measured* accuracy that fits them all; with no budget, the most accurate deployed stitch. The
    training-time score breaks ties (then the cost, higher first) and decides alone where no fitting
    stitch was measured. An unknown id or a budget below every deployed stitch is an error naming it."""
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
            raise PaletteError(f"{key}: the palette has no {col} for its deployed stitches (not measured; "
                               "python -m esta profile measures them)")
        fits = cand[cand[col] <= value]
        if fits.empty:
            cheapest = cand.loc[cand[col].idxmin()]
            raise PaletteError(f"{key} = {value:g} is below the cheapest deployed stitch "
                               f"(id {int(cheapest['stitch_id'])}, {col} {cheapest[col]:g})")
        cand = fits
    measured = cand[cand["accuracy"].notna()]
    if len(measured):
        cand = measured
    score = cand["score"].astype(float).fillna(float("-inf"))
    order = cand.assign(_score=score).sort_values(["accuracy", "_score", "gmacs", "stitch_id"], na_position="first")
    return int(order.iloc[-1]["stitch_id"])


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


class Palette:
    """A loaded palette: one stitched model, readied for serving, and the stitch it currently runs.

    ``Palette.load(path, family)`` checks and builds the model once; ``select`` switches the stitch
    (copies its own biases in place); calling the palette runs it on prepared inputs; ``predict`` (ViT)
    / ``generate`` (LLM) run it on images / prompts; ``export`` writes the standalone model of one
    stitch exactly as the workflow's export rules do. ``family`` is the family's palette module
    (``esta.vit.palette``, ``esta.llm.palette``): ``check_meta``, ``load_model``, ``forward`` and its
    own ``predict`` / ``generate`` / ``export`` / ``export_onnx``."""

    def __init__(self, folder: Path, meta: dict, table: pd.DataFrame, model, family: ModuleType):
        self.path, self.meta, self.table, self.model, self._family = Path(folder), meta, table, model, family
        self.stitch_id = -1
        self.select()

    @classmethod
    def load(cls, path: str | Path, family: ModuleType, anchors=None, device: str = "cpu",
             verify: bool = False) -> Palette:
        """Validate ``palette.json`` (the package's schema, then the family's checks), check every file
        it lists and every anchor against their sha256 (``anchors``: see ``resolve_anchors``; ``verify``:
        re-hash instead of trusting the per-user hash cache), then build the stitched model with the
        palette's tensors and ready it for serving on ``device``. Nothing reaches timm or transformers
        before every check has passed."""
        folder = Path(path)
        meta = read_meta(folder)
        if meta["kind"] != family.KIND:
            raise PaletteError(f"{folder / META}: field kind: a {meta['kind']!r} palette, not {family.KIND!r}")
        family.check_meta(meta, folder / META)
        trust.check_files(meta["files"], folder, f"{META} files", verify)
        table = read_table(folder)
        paths = resolve_anchors(folder, meta["anchors"], anchors, verify)
        model = family.load_model(folder, meta, paths, device)
        return cls(folder, meta, table, model.for_inference(), family)

    def select(self, max_gmacs: float | None = None, max_latency_ms: float | None = None,
               stitch_id: int | None = None, max_params: float | None = None) -> Palette:
        """Switch the active stitch (``choose``) and copy its own biases into the model in place (a few
        vectors; SN-Net's stitches own none). Returns the palette."""
        sid = choose(self.table, stitch_id, max_gmacs=max_gmacs, max_latency_ms=max_latency_ms,
                     max_params=max_params)
        self.model.activate(sid)
        self.stitch_id = sid
        return self

    @property
    def row(self) -> pd.Series:
        """The table row of the active stitch."""
        return self.table.set_index("stitch_id").loc[self.stitch_id]

    @property
    def device(self):
        return next(self.model.parameters()).device

    def __call__(self, *inputs, **kw):
        """The active stitch's output (logits) for prepared inputs: images (B, 3, S, S) for a ViT
        palette, ``(input_ids, attention_mask)`` for an LLM palette."""
        return self._family.forward(self.model, self.stitch_id, *inputs, **kw)

    def predict(self, images, batch_size: int = 32, out_dir: str | Path | None = None) -> pd.DataFrame:
        """Top-1 class of each image (paths, PIL images or image tensors), through the task's own eval
        transform, in batches: columns image, class_index, class, probability, stitch_id. A family that
        writes masks (``WRITES_MASKS``: ``esta.vit.seg_palette``) writes one colour-mapped mask PNG per image into ``out_dir`` instead and
        returns columns image, mask, width, height, stitch_id."""
        if not hasattr(self._family, "predict"):
            raise PaletteError(f"a {self.meta['kind']} palette does not classify images; use generate")
        if out_dir is not None:
            if not getattr(self._family, "WRITES_MASKS", False):
                raise PaletteError(f"a {self.meta['kind']} palette writes no masks: out_dir is for segmentation "
                                   "palettes")
            return self._family.predict(self, images, batch_size, out_dir=out_dir)
        return self._family.predict(self, images, batch_size)

    def generate(self, prompts: list[str] | str, max_new_tokens: int = 32, template: bool = True) -> list[str]:
        """Greedy answers of the active stitch (LLM palettes; ``template``: the Alpaca prompt it was tuned on)."""
        if not hasattr(self._family, "generate"):
            raise PaletteError(f"a {self.meta['kind']} palette does not generate text; use predict")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self._family.generate(self, prompts, max_new_tokens, template)

    def export(self, stitch_id: int, out_dir: str | Path, format: str = "safetensors") -> Path:
        """The standalone model of ``stitch_id`` (LoRA merged, biases baked in), as the workflow exports
        it (``format="safetensors"``), or as ONNX (``format="onnx"``, families that have it)."""
        sid = choose(self.table, stitch_id)
        if format == "safetensors":
            return self._family.export(self, sid, Path(out_dir))
        if format == "onnx" and hasattr(self._family, "export_onnx"):
            return self._family.export_onnx(self, sid, Path(out_dir))
        raise PaletteError(f"export format {format!r} is not available for a {self.meta['kind']} palette")

    def __repr__(self) -> str:
        r = self.row
        return (f"Palette({self.meta['kind']} {self.meta['method']} {self.meta.get('task', '')}: "
                f"{len(self.table)} stitches, {int(self.table['deployed'].sum())} deployed; stitch {self.stitch_id}, "
                f"{r['gmacs']:.4g} GMACs, {int(r['params']):,} params)")


def describe(path: str | Path, verify: bool = False) -> str:
    """A palette's summary line and stitch table, read (and checked) without building its model."""
    folder = Path(path)
    meta = read_meta(folder)
    table = read_table(folder, meta, verify)
    anchors = ", ".join(f"{a['name']} ({a['path']})" for a in meta["anchors"]) or "none (it holds its own)"
    split = sorted(set(table.loc[table["deployed"], "accuracy_split"].dropna()) - {""}) or ["none measured"]
    head = (f"{meta['kind']} palette, {meta['method']} {meta.get('variant', '')} {meta.get('task', '')} seed "
            f"{meta.get('seed')}: {len(table)} stitches, {int(table['deployed'].sum())} deployed, "
            f"{meta['params']:,} task parameters; accuracy: {', '.join(split)}; "
            f"serving: {meta.get('serving', 'shared adapters merged')}; anchors: {anchors}")
    return head + "\n" + table[TABLE_COLUMNS].to_string(index=False, na_rep="")
