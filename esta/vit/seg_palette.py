"""The segmentation palette (spec §12 and §14): what a user deploys from a dense ESTA or SN-Net run.

A seg palette is an ``esta.palette`` folder of kind ``seg``: the task tensors of the trained segmenter
(PST: the shared LoRA, the stitch biases -- the SETR heads' included --, the LS-fitted stitching layers and
the heads; SN-Net: every fine-tuned anchor, head and stitching layer), the stitch table with the measured
mIoU in its accuracy columns (``metric: miou``: ``accuracy`` is the selection split's mIoU, ``test_accuracy``
the test split's, ``test_pixel_acc`` beside them) and ``palette.json`` with the family at the segmentation
resolution, the head's width, the classes, **one RGB colour per class** (``colours``) and the eval transform
(resize to ``img_size``, normalise: ``esta.vit.seg_data.SegFolder`` without augmentation).

Loading rebuilds the segmenter as the dense rules' ``assemble_seg`` does and readies it for serving exactly
as a classification palette (``TunableViT.for_inference``: shared LoRA merged once, a stitch's biases
copied in place on ``select``), so a selected stitch equals its standalone export
(``esta.vit.export``, which rebuilds SETR heads) and the run's trained model.

``predict`` writes one colour-mapped mask per image: a PNG in palette mode (``P``) at the image's own
size -- the logits upsampled bilinearly from ``img_size`` to the image (mmseg's whole-image inference),
argmax per pixel -- whose pixel values are the class indices (0..K-1: the model's classes, i.e. ADE20K's
label - 1 under ``reduce_zero_label``) and whose PNG palette is the recorded ``colours``; opened with
``.convert("RGB")`` it shows those colours. The colours are PASCAL VOC's bit-interleaved colour map from
index 1 on (distinct for up to 255 classes, never black), fixed at build time and read back from the
palette, never recomputed.

``check_meta`` refuses, naming the field, what the ViT palette refuses (``esta.vit.palette.check_meta``:
allow-listed timm kwargs, known timm names, anchor count) plus a seg palette whose colours or classes do
not match its class count.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from esta.palette import TENSORS, Palette, PaletteError, anchor_record, task_tensors, write_palette
from esta.tensors import copy_into, load_tensors_file
from esta.vit.anchors import family
from esta.vit import palette as vit_palette
from esta.vit.palette import _family, _images, family_record
from esta.vit.tuning import TunableViT, TuningConfig

__all__ = ["KIND", "SCHEMA", "load", "check_meta", "class_colours", "write", "write_run", "load_model", "forward",
           "example_inputs", "predict", "masks", "export"]

KIND = "seg"
WRITES_MASKS = True  # Palette.predict passes out_dir
SCHEMA = Path(__file__).with_name("seg_palette.schema.json")  # the seg family's keys (package data)


def load(path: str | Path, anchors=None, device: str = "cpu", verify: bool = False) -> Palette:
    """``esta.palette.Palette.load`` of a segmentation palette."""
    return Palette.load(path, sys.modules[__name__], anchors, device, verify)


def class_colours(n: int) -> list[list[int]]:
    """``n`` distinct RGB colours: PASCAL VOC's colour map (the bits of the index spread over R, G, B
    from the most significant bit down) at indices 1..n, so no class is black."""
    if not 1 <= n <= 255:
        raise ValueError(f"class_colours: {n} classes; the PNG masks hold 1..255 classes")
    out = []
    for i in range(1, n + 1):
        rgb, c = [0, 0, 0], i
        for shift in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << shift
            c >>= 3
        out.append(rgb)
    return out


def check_meta(meta: dict, where: Path) -> None:
    """Refuse, naming the field, a seg ``palette.json`` that could load or download anything beyond its
    checked files or that does not describe a buildable segmenter (``esta.vit.palette.check_meta``'s
    checks, then colours and classes against ``num_classes``)."""
    vit_palette.check_meta(meta, where, SCHEMA)
    if len(meta["colours"]) != meta["num_classes"]:
        raise PaletteError(f"{where}: field colours: {len(meta['colours'])} entries for num_classes {meta['num_classes']}")


def write(out: str | Path, model: TunableViT, table: pd.DataFrame, *, fam, method: str, tuning: TuningConfig,
          manifest: dict, transform: dict, hidden: int, anchor_files: list[str | Path], settings: dict) -> Path:
    """Write the palette folder of a trained segmenter (``anchor_files``: the pretrained anchors PST
    needs; none for SN-Net, which holds its own)."""
    out = Path(out)
    names = [s.name for s in family(fam)]
    records = [anchor_record(n, f, out) for n, f in zip(names, anchor_files, strict=True)] if anchor_files else []
    k = manifest["num_classes"]
    serving = ("shared adapters merged" if model.merged_adapters
               else f"{tuning.peft} adapters unmerged (bottleneck modules run beside each linear)")
    meta = dict(kind=KIND, method=method, family=family_record(fam), num_classes=k, classes=manifest["classes"],
                colours=class_colours(k), metric="miou", transform=transform, tuning=tuning.to_dict(),
                seg=dict(hidden=hidden, reduce_zero_label=bool(manifest["reduce_zero_label"])),
                anchors=records, serving=serving, **settings)
    return write_palette(out, task_tensors(model), meta, table)


def write_run(out: str | Path, inp, p, w) -> Path:
    """The workflow's ``palette`` job on a dense task (rule inputs ``inp``, params ``p``, wildcards ``w``):
    the trained segmenter rebuilt as the run left it, the stitch table (the run's costs at the segmentation
    size, head included; selection and test mIoU of every stitch as measured by ``evaluate_stitches``; the
    deployed stitches with their score and interval), colours, transform and anchors by sha256."""
    from esta import runtime
    from esta.palette import stitch_table
    from esta.tensors import read_meta
    from esta.vit.anchors import family_at
    from esta.vit.build import read_manifest, tuning_config
    from esta.vit.data.transforms import describe_transform
    from esta.vit.seg import assemble_seg
    from esta.vit.seg_results import stitch_table as run_table

    d = p.dense
    manifest = read_manifest(inp.data)
    fam = family_at(p.family, d["img_size"])
    cfg = tuning_config(w.method, p.method["esta"])
    model = assemble_seg(fam, manifest["num_classes"], d["img_size"], d["head_hidden"], list(inp.anchors),
                         inp.stitch, cfg, state_file=inp.model, task=manifest["task"])
    run = run_table(pd.read_csv(inp.selection), pd.read_csv(inp.test))  # every stitch's costs and mIoUs
    test = run.rename(columns={"test_miou": "test_accuracy"})
    selection = run.rename(columns={"selection_miou": "selection_accuracy"})
    table = stitch_table(run, pd.read_csv(inp.deployed), None, test, selection)
    table = table.merge(run[["stitch_id", "test_miou", "test_pixel_acc"]], on="stitch_id")
    described = describe_transform(d["normalize"], p.family)
    transform = dict(kind="seg", img_size=d["img_size"], normalize=described["normalize"], mean=described["mean"],
                     std=described["std"])
    settings = dict(variant=w.variant, task=w.task, seed=int(w.seed), training=read_meta(inp.model),
                    provenance=runtime.provenance())
    return write(out, model, table, fam=fam, method=w.method, tuning=cfg, manifest=manifest, transform=transform,
                 hidden=d["head_hidden"], anchor_files=list(inp.anchors) if w.method == "esta" else [],
                 settings=settings)


def load_model(folder: Path, meta: dict, anchors: list[Path], device: str = "cpu") -> TunableViT:
    """The trained segmenter of a palette: anchors (pretrained files for PST, none for SN-Net) at the
    segmentation size -> SETR heads -> stitched -> the same trainable set -> the palette's tensors."""
    from esta.vit.palette import task_tensors_params
    from esta.vit.seg import assemble_seg

    fam, cfg = _family(meta["family"]), TuningConfig(**meta["tuning"])
    files = anchors if meta["method"] == "esta" else None  # SN-Net: its own, in the tensors
    model = assemble_seg(fam, meta["num_classes"], meta["transform"]["img_size"], meta["seg"]["hidden"], files,
                         None, cfg)
    tensors, _ = load_tensors_file(folder / TENSORS)
    copy_into(task_tensors_params(model), tensors, folder / TENSORS, f"the {meta['method']} segmenter of family {fam}")
    return model.to(device)


def forward(model: TunableViT, stitch_id: int, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, K, S, S) of prepared images (B, 3, S, S)."""
    with torch.no_grad():
        return model(x.to(next(model.parameters()).device), stitch_id)


def example_inputs(palette, batch: int, generator: torch.Generator, seq_len: int | None = None) -> tuple[torch.Tensor]:
    """Random images (B, 3, S, S) at the palette's segmentation size (``esta.profile``)."""
    size = palette.meta["transform"]["img_size"]
    return (torch.randn(batch, 3, size, size, generator=generator),)


def _prepare(meta: dict, image) -> torch.Tensor:
    """A PIL image -> (3, S, S) float, as ``SegFolder`` prepares an evaluation image (antialiased
    bilinear resize of the uint8 image, then scale to [0, 1] and normalise)."""
    import numpy as np
    from torchvision.transforms import v2

    t = meta["transform"]
    size = (t["img_size"], t["img_size"])
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    x = v2.Resize(size, antialias=True)(x)
    return v2.Normalize(t["mean"], t["std"])(v2.ToDtype(torch.float32, scale=True)(x))


def masks(palette, images, batch_size: int = 32) -> list[tuple[str, torch.Tensor]]:
    """(label, class-index map (H, W) int64 at the image's own size) per image of the active stitch."""
    import torch.nn.functional as F

    items = _images(images)
    out = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        logits = forward(palette.model, palette.stitch_id, torch.stack([_prepare(palette.meta, im) for _, im in chunk]))
        for (name, im), lg in zip(chunk, logits.float()):
            w, h = im.size
            if (h, w) != tuple(lg.shape[-2:]):
                lg = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            out.append((name, lg.argmax(0).cpu()))
    return out


def predict(palette, images, batch_size: int = 32, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Write one colour-mapped mask PNG per image into ``out_dir`` (``<image stem>.png``; inputs that
    are not files are named ``image_<i>.png``): columns image, mask, width, height, stitch_id."""
    import numpy as np
    from PIL import Image

    if out_dir is None:
        raise PaletteError("a seg palette writes one mask PNG per image: give an output folder (out_dir, "
                           "--out-dir on the command line)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [v for rgb in palette.meta["colours"] for v in rgb]
    rows, seen = [], set()
    for i, (name, mask) in enumerate(masks(palette, images, batch_size)):
        stem = Path(name).stem if not name.startswith("<") else f"image_{i}"
        if stem in seen:
            raise PaletteError(f"two inputs would write the same mask {out_dir / (stem + '.png')}: {name}")
        seen.add(stem)
        png = Image.fromarray(mask.numpy().astype(np.uint8), mode="P")
        png.putpalette(flat)
        path = out_dir / f"{stem}.png"
        png.save(path)
        rows.append(dict(image=name, mask=str(path), width=mask.shape[1], height=mask.shape[0],
                         stitch_id=palette.stitch_id))
    return pd.DataFrame(rows, columns=["image", "mask", "width", "height", "stitch_id"])


def export(palette, stitch_id: int, out_dir: Path) -> Path:
    """``esta.vit.export.export_stitch`` of one palette stitch (its SETR head rebuilt by ``load_stitch``)."""
    from esta.vit.build import anchor_arch
    from esta.vit.export import export_stitch

    meta = palette.meta
    row = palette.table.set_index("stitch_id").loc[stitch_id]
    prov = dict(method=meta["method"], task=meta.get("task"), seed=meta.get("seed"), metric="miou",
                test_miou=row["test_accuracy"], transform=meta["transform"], colours=meta["colours"],
                classes=meta["classes"], training=meta.get("training", {}), palette=str(palette.path))
    return export_stitch(palette.model, stitch_id, out_dir, anchor_arch(_family(meta["family"])), prov)
