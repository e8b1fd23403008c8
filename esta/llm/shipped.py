"""The tiny LLaMA anchors shipped inside the package (spec §11 "Offline default", our [decision]; the
vision counterpart is ``esta.vit.shipped``).

Why: briefly pretrained (300 / 450 steps, what the default's time budget allowed), the tiny pair was
too weak for its stitches to carry anything (tasks-A exact match 0.24 / 0.57; the stitches between
them stayed at the small anchor's exact match on tasks B whatever their size, issue 12), and that
pretraining was still the longest part of the LLM run. So ``config/upstream.yaml`` pretrains the pair
once, at length, with the workflow's own recipe (``llm_pretrain_anchor``), and the result lives in
``esta/llm/assets/<family>/``:

- ``anchor<i>.safetensors.xz``: the state dict of the pretrained ``LlamaForCausalLM`` in bfloat16,
  xz-compressed (bfloat16's exponent bytes compress well: the pair is about 2.3 MB instead of 6.2 MB
  in float32), with the sha256 of the float32 file it came from in its ``esta`` metadata;
- ``anchor<i>.config.json``: the model's ``config.json``;
- ``anchor<i>.json``: the pretraining info record, its tasks-A exact match re-measured on the stored
  (bfloat16-rounded) weights (``value``; the float32 one is kept as ``value_fp32``);
- ``tokenizer.json``, ``tokenizer_config.json``: the tokenizer the anchors were trained with (a run on
  shipped anchors must use it, not a freshly trained one);
- ``manifest.json``: sha256 and size of every file above, the exact command that made them, the
  recipe (the ``llm.suite``, ``llm.tokenizer`` and ``llm.pretrain`` slices) and the accuracies.

``llm.anchors.source: shipped`` installs them (``install``: checked against the manifest, cast back
to float32, written as a Hugging Face folder); ``source: pretrain`` still rebuilds them from scratch.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from transformers import LlamaConfig, LlamaForCausalLM

from esta import runtime

__all__ = ["ASSETS", "MANIFEST", "TOKENIZER_FILES", "shipped_dir", "read_shipped", "ship", "load_shipped",
           "install", "install_tokenizer"]

ASSETS = Path(__file__).parent / "assets"
MANIFEST = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_STORED_DTYPE = torch.bfloat16


def shipped_dir(family_name: str) -> Path:
    """The folder of a family's shipped anchors; a family without one names the layout expected."""
    return runtime.shipped_folder(ASSETS, family_name, MANIFEST, "LLM anchors",
                                  "anchor<i>.safetensors.xz, anchor<i>.config.json, anchor<i>.json and the tokenizer",
                                  "llm.anchors.source")


def _entry(folder: Path, name: str) -> dict:
    f = folder / name
    return dict(file=name, sha256=runtime.file_digest(f), bytes=f.stat().st_size)


def read_shipped(folder: str | Path) -> dict:
    """The manifest of a shipped folder, after checking every file it lists against its sha256 and size."""
    folder = Path(folder)
    path, manifest = runtime.read_listing(folder, MANIFEST)
    listed = [f for a in manifest["anchors"] for f in a["files"]] + manifest["tokenizer"]
    for entry in listed:
        runtime.check_listed(folder / entry["file"], entry["sha256"], entry["bytes"], path)
    return manifest


def ship(folders: list[str | Path], infos: list[dict], dest: str | Path, command: str, recipe: dict,
         family_name: str = "tiny", extra: dict | None = None) -> dict:
    """Store the pretrained anchor ``folders`` (HF folders with the tokenizer) and their info records
    ``infos`` (``value`` re-measured on the rounded weights) in ``dest`` with a manifest."""
    dest = runtime.ship_folder(dest, folders, infos, "anchor folder")
    entries = []
    for i, (src, info) in enumerate(zip(folders, infos)):
        src = Path(src)
        weights = src / "model.safetensors"
        tensors = {k: v.to(_STORED_DTYPE) if v.is_floating_point() else v
                   for k, v in load_bytes(weights.read_bytes()).items()}
        meta = dict(esta=json.dumps(dict(anchor=i, name=info["name"], stored_dtype="bfloat16",
                                         source_sha256=runtime.file_digest(weights))))
        blob = lzma.compress(save_bytes(tensors, meta), preset=9)
        names = [f"anchor{i}.safetensors.xz", f"anchor{i}.config.json", f"anchor{i}.json"]
        (dest / names[0]).write_bytes(blob)
        shutil.copyfile(src / "config.json", dest / names[1])
        runtime.write_json(dest / names[2], info)
        entries.append(dict(anchor=i, name=info["name"], params=info["params"], steps=info["steps"],
                            wall_s=info["wall_s"], tasks_a_em=info["value"], tasks_a_em_fp32=info.get("value_fp32"),
                            files=[_entry(dest, n) for n in names]))
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(folders[0]) / name, dest / name)
    manifest = dict(family=family_name, command=command, recipe=recipe, anchors=entries,
                    tokenizer=[_entry(dest, n) for n in TOKENIZER_FILES], stored_dtype="bfloat16",
                    provenance=runtime.provenance("cpu"), **(extra or {}))
    runtime.write_json(dest / MANIFEST, manifest)
    return read_shipped(dest)


def load_shipped(folder: str | Path, i: int) -> tuple[LlamaForCausalLM, dict]:
    """Shipped anchor ``i`` of ``folder`` as a float32 ``LlamaForCausalLM`` and its manifest entry."""
    folder = Path(folder)
    manifest = read_shipped(folder)
    if not 0 <= i < len(manifest["anchors"]):
        raise ValueError(f"{folder / MANIFEST} ships {len(manifest['anchors'])} anchors; anchor {i} requested")
    entry = manifest["anchors"][i]
    weights, config, _ = (folder / e["file"] for e in entry["files"])
    tensors = load_bytes(lzma.decompress(weights.read_bytes()))
    lm = LlamaForCausalLM(LlamaConfig.from_json_file(config))
    missing, unexpected = lm.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    # untied embeddings: every parameter is stored; only non-persistent buffers may be absent
    if unexpected or any(not k.endswith("inv_freq") for k in missing):
        raise ValueError(f"{weights} does not fit {config}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return lm.eval(), entry


def install_tokenizer(folder: str | Path, out: str | Path) -> None:
    """Copy the shipped tokenizer of ``folder`` (checked against the manifest) into ``out``."""
    read_shipped(folder)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(Path(folder) / name, out / name)


def install(folder: str | Path, i: int, folder_out: str | Path, info_out: str | Path) -> dict:
    """Write shipped anchor ``i`` of ``folder`` as a run's anchor: a Hugging Face folder (float32
    weights, config, tokenizer) at ``folder_out`` and its info record at ``info_out``, both naming the
    manifest they were checked against."""
    folder = Path(folder)
    lm, entry = load_shipped(folder, i)
    manifest = json.loads((folder / MANIFEST).read_text())
    shipped = dict(folder=str(folder), manifest_sha256=runtime.file_digest(folder / MANIFEST),
                   file_sha256=entry["files"][0]["sha256"], command=manifest["command"])
    tmp = Path(f"{folder_out}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp)
    install_tokenizer(folder, tmp)
    shutil.rmtree(folder_out, ignore_errors=True)
    os.replace(tmp, folder_out)
    info = json.loads((folder / entry["files"][2]["file"]).read_text())
    runtime.write_json(info_out, dict(info, shipped=shipped))
    return entry
