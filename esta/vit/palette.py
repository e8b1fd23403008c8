"""The ViT family's part of the palette (spec §12; ``esta.palette`` is the family-agnostic part).

What a ViT palette stores is what the trained ``TunableViT`` holds beyond the shared pretrained anchors:
its trainable tensors (PST: shared LoRA / DoRA / IA³ / adapters, stitch biases, heads; SN-Net: every
anchor, head and stitching layer) and the stitching layers, which PST keeps frozen but which least
squares fitted on the task's own images. Loading rebuilds the model as the workflow's ``assemble``
does, copies those tensors in and readies it for serving (``TunableViT.for_inference``: the shared
LoRA / DoRA / IA³ merged once, a stitch's biases copied in place on ``select``), so a palette stitch
computes what the trained model does at the speed of its export. Images go through the task's own eval
transform (spec §8), recorded in the palette.

``check_meta`` is what makes a palette from someone else safe to build: the family's JSON Schema
(``esta/vit/palette.schema.json``: family rows with allow-listed timm kwargs, no ``hf-hub:`` /
``local-dir:`` names, the tuning keys), known timm names and family names, and as many anchor files as
the family has anchors (ESTA) -- all before timm sees anything.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch

from esta.palette import TENSORS, Palette, PaletteError, anchor_record, task_tensors, write_palette
from esta.tensors import copy_into, load_tensors_file
from esta.trust import validate
from esta.vit.anchors import AnchorSpec, family
from esta.vit.build import anchor_arch, assemble
from esta.vit.tuning import TunableViT, TuningConfig, is_adapter_param

__all__ = ["KIND", "load", "check_meta", "family_record", "transform_record", "write", "write_run", "load_model", "forward",
           "predict", "export", "export_onnx", "example_inputs", "paper_storage"]

KIND = "vit"
SCHEMA = Path(__file__).with_name("palette.schema.json")  # the family's keys (package data)


def load(path: str | Path, anchors=None, device: str = "cpu", verify: bool = False) -> Palette:
    """``esta.palette.Palette.load`` of a ViT palette."""
    return Palette.load(path, sys.modules[__name__], anchors, device, verify)


def family_record(fam: str | tuple[AnchorSpec, ...]) -> str | list[dict]:
    """A family as JSON: its name (``embedded``, ``vit-ti-s-b@32``) or its rows (a timm family)."""
    return fam if isinstance(fam, str) else [asdict(s) for s in fam]


def _family(rec: str | list[dict]) -> str | tuple[AnchorSpec, ...]:
    return rec if isinstance(rec, str) else tuple(AnchorSpec(**r) for r in rec)


def check_meta(meta: dict, where: Path, schema: Path = SCHEMA) -> None:
    """Refuse, naming the field, a ViT ``palette.json`` that could make the build load or download
    anything beyond its checked files, or that does not describe a buildable model (``schema``: the
    kind's keys; the segmentation palette passes its own)."""
    import timm

    validate(meta, schema, where)
    rec = meta["family"]
    if isinstance(rec, list):
        for i, row in enumerate(rec):
            if not timm.is_model(row["timm_name"]):
                raise PaletteError(f"{where}: field family/{i}/timm_name: {row['timm_name']!r} is not a timm model")
    try:
        n = len(family(_family(rec)))
        TuningConfig(**meta["tuning"])
    except ValueError as err:
        raise PaletteError(f"{where}: field {'family' if 'family' in str(err) else 'tuning'}: {err}") from err
    if meta["method"] == "esta" and len(meta["anchors"]) != n:
        raise PaletteError(f"{where}: field anchors: an ESTA palette of a {n}-anchor family must name {n} "
                           f"pretrained anchors, it names {len(meta['anchors'])}")
    if len(meta["classes"]) != meta["num_classes"]:
        raise PaletteError(f"{where}: field classes: {len(meta['classes'])} names for num_classes "
                           f"{meta['num_classes']}")


def transform_record(task: str, manifest: dict, img_size: int, described: dict) -> dict:
    """The task's eval transform: ``kind`` (``vtab``: resize; ``fgvc``: resize + centre crop), the
    image size and ``described`` (``esta.vit.data.describe_transform``: normalisation, interpolation)."""
    from esta.vit.tasks import TASKS

    fgvc = TASKS[task].suite == "fgvc" if task in TASKS else manifest.get("transform") == "fgvc"
    return dict(kind="fgvc" if fgvc else "vtab", img_size=img_size, **described)


def write(out: str | Path, model: TunableViT, table: pd.DataFrame, *, fam, method: str, tuning: TuningConfig,
          manifest: dict, transform: dict, anchor_files: list[str | Path], settings: dict) -> Path:
    """Write the palette folder of a trained model. ``anchor_files``: the pretrained anchors the
    palette needs (ESTA); none for SN-Net, whose palette holds its own fine-tuned anchors.
    ``settings``: what else to record (variant, task, seed, training metadata, ...)."""
    out = Path(out)
    names = [s.name for s in family(fam)]
    records = [anchor_record(n, f, out) for n, f in zip(names, anchor_files, strict=True)] if anchor_files else []
    classes = manifest.get("classes") or [str(i) for i in range(manifest["num_classes"])]
    serving = ("shared adapters merged" if model.merged_adapters
               else f"{tuning.peft} adapters unmerged (bottleneck modules run beside each linear)")
    meta = dict(kind=KIND, method=method, family=family_record(fam), num_classes=manifest["num_classes"],
                classes=classes, transform=transform, tuning=tuning.to_dict(), anchors=records, serving=serving,
                **settings)
    return write_palette(out, task_tensors(model), meta, table)


def write_run(out: str | Path, inp, p, w) -> Path:
    """The workflow's ``palette`` job for a ViT run (rule inputs ``inp``, params ``p``, wildcards ``w``):
    the trained model rebuilt as the run left it, the stitch table (costs with the task's head; test
    accuracy of every stitch measured on this model, the deployed ones' always; selection-split
    accuracy where the run has it), the task's eval transform and the anchors by sha256; no latency
    yet (``palette_latency`` measures it on the palette itself)."""
    from esta.palette import stitch_table
    from esta.tensors import read_meta
    from esta.vit.anchors import family_at
    from esta.vit.build import read_manifest, tuning_config
    from esta.vit.data import describe_transform
    from esta.vit.metrics import with_task_head
    from esta import runtime

    manifest = read_manifest(inp.data)
    fam = family_at(p.family, p.img_size)
    cfg = tuning_config(w.method, p.method[w.method])
    model = assemble(fam, manifest["num_classes"], inp.anchors, inp.stitch, cfg, state_file=inp.model)
    stitches = with_task_head(pd.read_csv(inp.stitches), manifest["num_classes"])
    accuracy = pd.read_csv(inp.accuracy)  # the deployed stitches of the model the palette holds
    test = pd.read_csv(inp.stitch_accuracy) if "stitch_accuracy" in inp.keys() else accuracy.iloc[:0]
    test = pd.concat([test[~test["stitch_id"].isin(accuracy["stitch_id"])], accuracy])[["stitch_id", "test_accuracy"]]
    selection = pd.read_csv(inp.selection) if "selection" in inp.keys() else None
    table = stitch_table(stitches, pd.read_csv(inp.deployed), None, test, selection)
    transform = transform_record(w.task, manifest, p.img_size,
                                 describe_transform(p.normalize, p.family, p.fgvc_interpolation))
    settings = dict(variant=w.variant, task=w.task, seed=int(w.seed), trained_in=p.mode,
                    training=read_meta(inp.model), provenance=runtime.provenance())
    return write(out, model, table, fam=fam, method=w.method, tuning=cfg, manifest=manifest, transform=transform,
                 anchor_files=inp.anchors if w.method == "esta" else [], settings=settings)


def load_model(folder: Path, meta: dict, anchors: list[Path], device: str = "cpu") -> TunableViT:
    """The trained model of a palette: anchors (pretrained files for PST, none for SN-Net) -> stitched
    -> the same trainable set -> the palette's tensors copied in."""
    fam, cfg = _family(meta["family"]), TuningConfig(**meta["tuning"])
    files = anchors if meta["method"] == "esta" else [None] * len(family(fam))  # SN-Net: its own, in the tensors
    model = assemble(fam, meta["num_classes"], files, None, cfg)
    tensors, _ = load_tensors_file(folder / TENSORS)
    copy_into(task_tensors_params(model), tensors, folder / TENSORS, f"the {meta['method']} model of family {fam}")
    return model.to(device)


def task_tensors_params(model: TunableViT) -> dict[str, torch.nn.Parameter]:
    """``task_tensors`` as the model's own parameters (to load into)."""
    params = dict(model.named_parameters())
    return {k: params[k] for k in task_tensors(model)}


def forward(model: TunableViT, stitch_id: int, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x.to(next(model.parameters()).device), stitch_id)


def example_inputs(palette, batch: int, generator: torch.Generator, seq_len: int | None = None) -> tuple[torch.Tensor]:
    """Random images (B, 3, S, S) at the palette's input size (``esta.profile``: latency does not
    depend on the pixels; ``seq_len`` is the LLM family's and has no meaning for an image)."""
    size = palette.meta["transform"]["img_size"]
    return (torch.randn(batch, 3, size, size, generator=generator),)


def eval_transform_of(meta: dict):
    """The torchvision transform a palette's images go through (the task's eval transform)."""
    from esta.vit.data import eval_transform, fgvc_transform

    t = meta["transform"]
    mean_std = (tuple(t["mean"]), tuple(t["std"]))
    if t["kind"] == "fgvc":
        return fgvc_transform(t["img_size"], train=False, mean_std=mean_std, interpolation=t["fgvc_interpolation"])
    return eval_transform(t["img_size"], mean_std=mean_std)


def _images(images) -> list[tuple[str, object]]:
    """(label, PIL image) per input: a path (read as RGB), a PIL image, or an image tensor (3, H, W)
    / a batch (B, 3, H, W), float in [0, 1] or uint8."""
    from PIL import Image
    from torchvision.transforms.functional import to_pil_image

    from esta.vit.data.files import load_rgb

    if isinstance(images, torch.Tensor | str | os.PathLike | Image.Image):
        images = list(images) if isinstance(images, torch.Tensor) and images.dim() == 4 else [images]
    out = []
    for i, item in enumerate(images):
        if isinstance(item, str | os.PathLike):
            try:
                out.append((str(item), load_rgb(Path(item))))
            except OSError as err:
                raise PaletteError(f"unreadable image {item}: {err.__cause__ or err}") from err
        elif isinstance(item, Image.Image):
            out.append((f"<image {i}>", item.convert("RGB")))
        elif isinstance(item, torch.Tensor) and item.dim() == 3 and item.shape[0] == 3:
            out.append((f"<tensor {i}>", to_pil_image(item)))
        else:
            raise PaletteError(f"input {i} is not an image path, PIL image or (3, H, W) tensor: {type(item).__name__}")
    return out


def predict(palette, images, batch_size: int = 32) -> pd.DataFrame:
    """Top-1 class and its softmax probability per image, through the task's eval transform."""
    items = _images(images)
    transform = eval_transform_of(palette.meta)
    classes = palette.meta["classes"]
    rows = []
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        x = torch.stack([transform(im) for _, im in chunk])  # (B, 3, S, S)
        prob = forward(palette.model, palette.stitch_id, x).float().softmax(-1)
        p, idx = prob.max(-1)
        rows += [dict(image=name, class_index=int(c), **{"class": classes[int(c)]}, probability=float(q),
                      stitch_id=palette.stitch_id) for (name, _), c, q in zip(chunk, idx, p)]
    return pd.DataFrame(rows, columns=["image", "class_index", "class", "probability", "stitch_id"])


def export(palette, stitch_id: int, out_dir: Path) -> Path:
    """``esta.vit.export.export_stitch`` of one palette stitch: the files ``export_deployed`` writes."""
    from esta.vit.export import export_stitch

    meta = palette.meta
    row = palette.table.set_index("stitch_id").loc[stitch_id]
    prov = dict(method=meta["method"], variant=meta.get("variant"), task=meta.get("task"), seed=meta.get("seed"),
                trained_in=meta.get("trained_in"), test_accuracy=row["test_accuracy"], transform=meta["transform"],
                training=meta.get("training", {}), palette=str(palette.path))
    return export_stitch(palette.model, stitch_id, out_dir, anchor_arch(_family(meta["family"])), prov)


def export_onnx(palette, stitch_id: int, out_dir: Path) -> Path:
    """Stitch ``stitch_id`` as ``<out_dir>/stitch_<id>.onnx``: the standalone model the safetensors
    export holds (``esta.vit.export.merged_path``: path modules only, LoRA merged, biases baked in)
    through ``torch.onnx.export`` with a dynamic batch axis; input ``images`` (B, 3, S, S) after the
    task's eval transform, output ``logits`` (B, classes). The palette's classes, transform and stitch
    are recorded as the model's metadata. Written beside, then renamed."""
    import json

    import onnx

    from esta.vit.export import merged_path

    meta = palette.meta
    standalone = merged_path(palette.model, stitch_id).eval()
    size = meta["transform"]["img_size"]
    x = torch.zeros(2, 3, size, size, device=palette.device)
    out = Path(out_dir) / f"stitch_{stitch_id:03d}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    batch = torch.export.Dim("batch", min=1, max=4096)
    # optimize=False: ONNX Runtime folds and fuses the graph itself when it opens it (and the
    # exporter's own pass doubles the export time)
    program = torch.onnx.export(standalone, (x,), input_names=["images"], output_names=["logits"],
                                dynamic_shapes={"x": {0: batch}}, dynamo=True, external_data=False,
                                optimize=False, verbose=False)
    program.save(str(tmp))
    model = onnx.load(str(tmp))
    info = dict(stitch_id=stitch_id, classes=meta["classes"], transform=meta["transform"], method=meta["method"],
                task=meta.get("task"), palette=str(palette.path), format="esta-stitch-onnx/1")
    for k, v in info.items():
        model.metadata_props.add(key=k, value=json.dumps(v))
    onnx.save(model, str(tmp))
    os.replace(tmp, out)
    return out


def paper_storage(family_name: str = "vit-ti-s-b", num_classes: int = 100, rank: int = 8) -> pd.DataFrame:
    """Storage of one task at a family's shape, counted on the meta device (no weights): per method,
    the trainable parameters, the palette's parameters (``task_tensors``: PST adds the LS-fitted
    stitching layers to what trains), the shared pretrained anchors ESTA needs (without heads; SN-Net
    needs none) and the mean standalone export of one stitch; bytes at fp32."""
    from esta.vit.info import meta_stitched, stitch_table

    stitches = stitch_table(family_name, num_classes)
    rows = []
    for method, cfg in (("esta", TuningConfig(rank=rank)), ("snnet", TuningConfig(mode="full"))):
        model = meta_stitched(family_name, num_classes, cfg)
        palette = sum(t.numel() for t in task_tensors(model).values())
        anchors = 0
        if method == "esta":
            anchors = sum(p.numel() for a in model.net.anchors for n, p in a.named_parameters()
                          if not n.startswith("head.") and not is_adapter_param(n))
        rows.append(dict(method=method, family=family_name, num_classes=num_classes, rank=rank,
                         trainable_params=sum(p.numel() for p in model.trainable().values()),
                         palette_params=palette, palette_bytes=4 * palette, anchors_params=anchors,
                         anchors_bytes=4 * anchors, export_bytes_per_stitch=4 * stitches["params"].mean(),
                         n_stitches=len(stitches)))
    return pd.DataFrame(rows)
