"""Export of one deployed Stitched LLaMA stitch as a self-contained folder (spec §6 "Export", §11;
the ViT counterpart is ``esta.vit.export``).

The folder holds what the stitch runs through and nothing else, in the spirit of a Hugging Face model
folder:

- ``model.safetensors``: the front anchor's ``embed_tokens`` and decoder layers ``0..j``, the
  stitching linear, the end anchor's layers ``k..``, its final norm and ``lm_head`` (an anchor's own
  stitch: that anchor alone), under the parameter names of ``esta.llm.stitch.StitchedLlama``. The
  shared LoRA is merged into the weights (computed from the LoRA factors; the shared base weights of the
  source model are not touched), and the stitch's own biases are baked into its linears as real
  ``bias`` parameters (LLaMA's linears have none; the stitching linear's is replaced by the stitch's copy);
- ``stitch_config.json``: every anchor's ``LlamaConfig``, the stitch rule, the stitch's table row
  (front, end, j, k, layer), which linears carry baked biases, and the library versions that wrote it;
- the tokenizer files (``save_pretrained``), when a tokenizer is given.

Precision policy (spec §11): the merge ``W + ΔW`` and the baked biases are computed in fp32 and the
folder is written in the anchors' dtype (bf16 at paper scale). A tensor the path reaches under two
names (``lm_head`` tied to ``embed_tokens`` in an anchor's own stitch) is stored once and tied again on
load (``tied`` in the config); the end anchor's eos ids are recorded, so generation stops where the
trained model's does.

``load_stitch(folder)`` rebuilds the stitched architecture on the meta device, keeps only the path,
loads the tensors with ``safetensors`` (no pickle), and returns a ``DeployedStitch`` whose forward and
``.generate`` are ``StitchedLlama``'s own on that one stitch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
import transformers
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from esta.llm.stitch import StitchedLlama

__all__ = ["path_state_dict", "export_stitch", "load_stitch", "DeployedStitch", "FORMAT"]

FORMAT = "esta-stitched-llama/1"
WEIGHTS, CONFIG = "model.safetensors", "stitch_config.json"


def _split(model) -> tuple[StitchedLlama, Callable[[int], dict[str, nn.Parameter]] | None]:
    """The stitched net and, for a ``TunableLlama``, a function giving a stitch's own biases."""
    if isinstance(model, StitchedLlama):
        return model, None
    return model.net, model.biases_for


@torch.no_grad()
def path_state_dict(model, stitch_id: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The deployable tensors of one stitch under plain ``StitchedLlama`` names: path parameters only,
    LoRA merged (``W + ΔW`` computed afresh in fp32, the shared ``W`` untouched), stitch biases baked
    in as ``<linear>.bias``, everything in the anchors' dtype (precision policy, spec §11). ``model``
    is a ``StitchedLlama`` or a ``TunableLlama``.

    Returns ``(tensors, tied)``: a tensor the path reaches under two names (``lm_head.weight`` tied
    to ``embed_tokens.weight`` in an anchor's own stitch) is stored once, and ``tied`` maps the
    other name to the stored one."""
    net, biases_for = _split(model)
    dtype = net.anchors[net.stitch(stitch_id).end].model.norm.weight.dtype
    out, seen, tied = {}, {}, {}
    # remove_duplicate=False: a tied lm_head is listed under its own name too, so it is on the path
    for name, p in net.named_parameters(remove_duplicate=False):
        if net.on_path(name, stitch_id) and "lora_" not in name:
            key = name.replace(".base_layer.", ".")
            if id(p) in seen:
                tied[key] = seen[id(p)]
                continue
            seen[id(p)] = key
            out[key] = p.detach().float()
    for name, m in net.named_modules():
        if isinstance(m, LoraLayer) and net.on_path(name + ".", stitch_id):
            if m.merged:
                raise ValueError(f"{name}: LoRA is already merged into the shared weight; export merges itself")
            key = f"{name}.weight"
            out[key] = out[key] + sum(m.get_delta_weight(a).float() for a in m.active_adapters if a in m.lora_A)
    if biases_for is not None:
        for name, b in biases_for(stitch_id).items():
            out[name.replace(".base_layer.", ".")] = b.detach().float()
    return {k: v.to(dtype).contiguous() for k, v in out.items()}, tied


def export_stitch(model, stitch_id: int, folder: str | Path, tokenizer=None, extra: dict | None = None) -> Path:
    """Write stitch ``stitch_id`` of ``model`` (``StitchedLlama`` or ``TunableLlama``) to ``folder``
    (replaced atomically: written beside it, then renamed). ``extra`` is recorded in the config
    (e.g. the training settings, seed and importance of the stitch)."""
    net, _ = _split(model)
    s = net.stitch(stitch_id)
    tensors, tied = path_state_dict(model, stitch_id)
    biased = sorted(k[: -len(".bias")] for k in tensors if k.endswith(".bias") and "stitch_layers" not in k)
    config = dict(
        format=FORMAT, stitch_id=stitch_id, rule=net.rule, front=s.front, end=s.end, j=s.j, k=s.k, layer=s.layer,
        depth=s.depth, anchors=[a.config.to_dict() for a in net.anchors], biased_linears=biased, tied=tied,
        eos_token_ids=net.stop_ids(stitch_id),
        params=sum(t.numel() for t in tensors.values()), dtype=str(next(iter(tensors.values())).dtype),
        versions=dict(torch=torch.__version__, transformers=transformers.__version__), extra=extra or {},
    )
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    safetensors.torch.save_file(tensors, tmp / WEIGHTS, metadata=dict(format=FORMAT, stitch_id=str(stitch_id)))
    (tmp / CONFIG).write_text(json.dumps(config, indent=1))
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _prune(net: StitchedLlama, stitch_id: int) -> None:
    """Replace every module off the stitch's path by ``nn.Identity`` (no parameters), in place."""
    s = net.stitch(stitch_id)
    used = {a: set(layers) for a, layers in net.segments(stitch_id)}
    for a, lm in enumerate(net.anchors):
        if a != s.front:
            lm.model.embed_tokens = nn.Identity()
        for i in range(len(lm.model.layers)):
            if i not in used.get(a, ()):
                lm.model.layers[i] = nn.Identity()
        if a != s.end:
            lm.model.norm, lm.lm_head = nn.Identity(), nn.Identity()
    for p, layers in enumerate(net.stitch_layers):
        for i in range(len(layers)):
            if (p, i) != (s.front, s.layer) or s.is_anchor:
                layers[i] = nn.Identity()


class DeployedStitch(nn.Module):
    """One exported stitch: ``forward(input_ids, attention_mask) -> logits`` and greedy ``generate``,
    both ``StitchedLlama``'s on ``stitch_id``; modules off the path are ``nn.Identity``."""

    def __init__(self, net: StitchedLlama, stitch_id: int, config: dict):
        super().__init__()
        self.net, self.stitch_id, self.config = net, stitch_id, config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw) -> torch.Tensor:
        return self.net(input_ids, attention_mask, self.stitch_id, **kw)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 max_new_tokens: int = 32, **kw) -> torch.Tensor:
        return self.net.generate(input_ids, attention_mask, self.stitch_id, max_new_tokens, **kw)

    def stop_ids(self, stitch_id: int, eos_token_id: int | list[int] | None = None) -> list[int]:
        """Ids that end generation (``StitchedLlama.stop_ids``; the exported generation config's)."""
        return self.net.stop_ids(stitch_id, eos_token_id)


def load_stitch(folder: str | Path, device: torch.device | str = "cpu"):
    """Load an exported stitch: ``(DeployedStitch, tokenizer or None)``. Errors name the folder and
    what it should hold."""
    folder = Path(folder)
    for f in (CONFIG, WEIGHTS):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{str(folder / f)!r} does not exist; an exported stitch folder holds "
                                    f"{CONFIG}, {WEIGHTS} and optionally tokenizer files (esta.llm.export)")
    config = json.loads((folder / CONFIG).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG}: format {config.get('format')!r} is not {FORMAT!r}")
    configs = [LlamaConfig.from_dict(c) for c in config["anchors"]]
    with torch.device("meta"):  # the architecture without memory; only the path gets real tensors
        net = StitchedLlama([LlamaForCausalLM(c) for c in configs], rule=config["rule"])
    sid = config["stitch_id"]
    s = net.stitch(sid)
    described = tuple(config[k] for k in ("front", "end", "j", "k", "layer"))
    if (s.front, s.end, s.j, s.k, s.layer) != described:
        raise ValueError(f"{folder / CONFIG}: stitch {sid} is {s} under rule {net.rule!r}, "
                         f"but the file describes (front, end, j, k, layer) = {described}")
    _prune(net, sid)
    tensors = safetensors.torch.load_file(folder / WEIGHTS, device=str(device))
    for name in config["biased_linears"]:  # LLaMA linears built without bias get the baked one
        net.get_submodule(name).bias = nn.Parameter(tensors[f"{name}.bias"])
    missing, unexpected = net.load_state_dict(tensors, strict=False, assign=True)
    for name, source in config["tied"].items():  # one tensor under two names (tied embeddings)
        module, _, attr = name.rpartition(".")
        setattr(net.get_submodule(module), attr, net.get_parameter(source))
    missing = [k for k in missing if k not in config["tied"]]
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS} does not fit the stitch described by {CONFIG}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for lm, c in zip(net.anchors, configs):  # non-persistent rotary buffers are computed, not stored
        lm.model.rotary_emb = LlamaRotaryEmbedding(c).to(device)
    net.anchors[s.end].generation_config.eos_token_id = config["eos_token_ids"]
    meta = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"load_stitch({folder}): tensors left unloaded: {meta[:5]}")
    tokenizer = None
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return DeployedStitch(net, sid, config).eval(), tokenizer
