"""PST for Stitched LLaMA: a shared peft LoRA plus stitch-specific biases (spec §11 "PST"; the ViT
counterpart is ``esta.vit.tuning``).

Everything of the anchors and the LS-initialised stitching layers is frozen except
- a *shared* LoRA (peft ``LoraConfig`` + ``inject_adapter_in_model``, r = 8, alpha = 16) on the
  attention projections of every decoder layer (default ``q_proj``, ``v_proj``) and on every
  stitching layer: all stitches through a module use its LoRA;
- *stitch-specific biases*: LLaMA's linears have none, so each stitch owns new **zero-initialised**
  vectors added to the outputs of the LoRA-wrapped linears on its path, and its own copy of every
  bias that exists (its stitching layer's LS-initialised one; ``attention_bias`` / ``mlp_bias``
  variants' pretrained ones). A fresh model therefore computes exactly the LS-initialised stitched
  function.
Embeddings, norms and ``lm_head`` stay frozen.

Precision policy (spec §11): every trainable tensor (LoRA A/B, stitch biases) is fp32 whatever the
anchors' dtype -- AdamW then updates fp32 master weights, and small updates are not lost to bf16
rounding. peft casts the input of a LoRA to its fp32 weights and the sum back to the base output's
dtype; a stitch bias is cast to the dtype of the linear it joins (a differentiable cast, so its
gradient reaches the fp32 master).

The biases are separate parameters (one ``ParameterList`` per stitch, names kept beside it), so a
stitch not sampled in a step gets ``grad=None`` and AdamW leaves it alone. While training they reach
the forward as ``overrides`` of the stitched model (``torch.func.functional_call`` per layer); the
stitch is an argument, never stored state. For serving (spec §12, ``for_inference``) the LoRA is merged
once (``W + ΔW`` in fp32, as ``esta.llm.export`` computes it) and a stitch's biases are copied into its
linears in place (``activate``), so prefill and every decoded token call the modules directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from esta.llm import distributed
from esta.llm.anchors import build_family
from esta.llm.stitch import StitchedLlama, self_or_base
from esta.tunable import adamw_groups, path_params, trainable_of

__all__ = [
    "LlamaTuningConfig", "TunableLlama", "inject_shared_lora", "make_tunable", "trainable_by_kind", "family_trainable",
]


@dataclass
class LlamaTuningConfig:
    """The shared LoRA and whether stitches own biases (off: the "shared LoRA only" ablation)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    stitch_biases: bool = True

    def __post_init__(self):
        self.targets = tuple(self.targets)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        known = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        bad = [t for t in self.targets if t not in known]
        if not self.targets or bad:
            raise ValueError(f"LoRA targets must be a non-empty subset of {known}, got {list(self.targets)}")

    def target_regex(self) -> str:
        return rf".*\.({'|'.join(self.targets)})|stitch_layers\.\d+\.\d+"

    def to_dict(self) -> dict:
        return dict(asdict(self), targets=list(self.targets))


def inject_shared_lora(net: StitchedLlama, cfg: LlamaTuningConfig) -> dict[str, nn.Module]:
    """Wrap the targeted linears of ``net`` in place with one peft LoRA; returns them by name.
    peft freezes every other parameter of ``net`` (``requires_grad=False``) as it injects."""
    config = LoraConfig(target_modules=cfg.target_regex(), r=cfg.rank, lora_alpha=cfg.alpha,
                        lora_dropout=cfg.dropout, bias="none")
    inject_adapter_in_model(config, net)
    wrapped = {name: m for name, m in net.named_modules() if isinstance(m, LoraLayer)}
    if not wrapped:
        raise ValueError(f"LoRA targets {list(cfg.targets)} matched no module of the stitched model")
    return wrapped


class TunableLlama(nn.Module):
    """A ``StitchedLlama`` with its trainable set settled: ``model(ids, mask, stitch_id)`` -> logits;
    implements ``esta.tunable.TunableStitches`` for ``esta.train.train`` (``loss``,
    ``importance_params``, ``trainable``, ``param_groups``, gradient checkpointing, and the rank and
    gradient reduction of a data-parallel run)."""

    def __init__(self, net: StitchedLlama, cfg: LlamaTuningConfig):
        super().__init__()
        self.cfg, self.net = cfg, net
        self.rank, self.world = 0, 1  # one replica of a data-parallel run: see esta.llm.distributed
        wrapped = inject_shared_lora(net, cfg)
        for n, p in net.named_parameters():  # peft makes LoRA in the base layer's dtype: fp32 masters instead
            if "lora_" in n:
                p.data = p.data.float()
        self.biases = nn.ModuleList()
        self._joins: dict[str, torch.dtype] = {}  # stitch-bias name -> dtype of the linear it joins
        self._bias_names: list[list[str]] = []  # _bias_names[s][i] names what biases[s][i] stands in for
        self._theta: dict[int, list[nn.Parameter]] = {}
        self.deployed, self._active, self._slots = False, None, []  # for_inference / activate
        for s in net.table:
            names, params = [], []
            if cfg.stitch_biases:
                for n, m in wrapped.items():
                    if not net.on_path(n + ".", s.stitch_id):
                        continue
                    base = self_or_base(m)
                    name = f"{n}.base_layer.bias"
                    names.append(name)
                    self._joins[name] = base.weight.dtype
                    if base.bias is None:  # a LLaMA linear: a new, zero vector
                        params.append(nn.Parameter(torch.zeros(base.out_features, dtype=torch.float32,
                                                               device=base.weight.device)))
                    else:  # the stitching layer (LS bias) or a biased linear: this stitch's own copy
                        params.append(nn.Parameter(base.bias.detach().float().clone()))
            self._bias_names.append(names)
            self.biases.append(nn.ParameterList(params))

    @property
    def table(self):
        return self.net.table

    @property
    def num_stitches(self) -> int:
        return self.net.num_stitches

    def biases_for(self, stitch_id: int) -> dict[str, nn.Parameter]:
        """Stitch ``stitch_id``'s own biases keyed by the parameter they stand in for."""
        self.net.stitch(stitch_id)  # range check
        return dict(zip(self._bias_names[stitch_id], self.biases[stitch_id]))

    def overrides(self, stitch_id: int) -> dict[str, torch.Tensor]:
        """The stitch's biases as the forward uses them: each cast to the dtype of its linear."""
        return {n: b.to(self._joins[n]) for n, b in self.biases_for(stitch_id).items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, stitch_id: int,
                **kw) -> torch.Tensor:
        if self.deployed:
            self.activate(stitch_id)
            return self.net(input_ids, attention_mask, stitch_id, **kw)
        return self.net(input_ids, attention_mask, stitch_id, overrides=self.overrides(stitch_id), **kw)

    @torch.no_grad()
    def for_inference(self) -> TunableLlama:
        """Ready the model for serving, once and in place: eval mode, every LoRA merged into its base
        weight (``W + ΔW`` computed in fp32 and stored in ``W``'s dtype, exactly as
        ``esta.llm.export.path_state_dict`` does) and unwrapped, nothing requires grad, and every
        linear that a stitch owns a bias for given a ``bias`` to copy it into (``activate``)."""
        if self.deployed:
            return self
        self.eval()
        for name, m in list(self.net.named_modules()):
            if isinstance(m, LoraLayer):
                base = m.get_base_layer()
                delta = sum(m.get_delta_weight(a).float() for a in m.active_adapters if a in m.lora_A)
                base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
                parent, _, child = name.rpartition(".")
                setattr(self.net.get_submodule(parent), child, base)
        self.requires_grad_(False)
        for names, own in zip(self._bias_names, self.biases):
            targets = []
            for n in names:
                linear = self.net.get_submodule(n.removesuffix(".base_layer.bias"))
                if linear.bias is None:  # a LLaMA linear: give it the bias a stitch adds
                    linear.bias = nn.Parameter(linear.weight.new_zeros(linear.out_features), requires_grad=False)
                targets.append(linear.bias)
            self._slots.append((targets, list(own)))
        self.deployed, self._active = True, None
        return self

    @torch.no_grad()
    def activate(self, stitch_id: int) -> None:
        """Copy stitch ``stitch_id``'s own biases into the linears of its path, in place (after
        ``for_inference``; nothing is copied when it is active already)."""
        if not self.deployed:
            raise RuntimeError("activate() needs for_inference() first: while training, biases are overrides")
        if self._active == stitch_id:
            return
        self.net.stitch(stitch_id)  # range check, naming the valid ids
        if self._slots[stitch_id][0]:
            torch._foreach_copy_(*self._slots[stitch_id])  # one dispatch, each cast to its linear's dtype
        self._active = stitch_id

    def stop_ids(self, stitch_id: int, eos_token_id: int | list[int] | None = None) -> list[int]:
        """Ids that end generation (``StitchedLlama.stop_ids``)."""
        return self.net.stop_ids(stitch_id, eos_token_id)

    def generate(self, input_ids, attention_mask, stitch_id: int, max_new_tokens: int, **kw) -> torch.Tensor:
        if self.deployed:
            self.activate(stitch_id)
            return self.net.generate(input_ids, attention_mask, stitch_id, max_new_tokens, **kw)
        return self.net.generate(input_ids, attention_mask, stitch_id, max_new_tokens,
                                 overrides=self.overrides(stitch_id), **kw)

    def loss(self, batch: tuple[torch.Tensor, ...], stitch_id: int) -> torch.Tensor:
        """Next-token cross-entropy of a batch ``(input_ids, attention_mask, labels)``: logits at t
        predict labels at t + 1; labels -100 (prompt, padding) are ignored."""
        if self.world == 1:
            ids, mask, labels = batch
            logits = self(ids, mask, stitch_id)
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        # data parallel: this rank's share of the global batch, normalised by the global token count
        ids, mask, labels = distributed.shard(batch, self.rank, self.world)
        logits = self(ids, mask, stitch_id)
        target = labels[:, 1:]
        total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=-100,
                                reduction="sum")
        return distributed.global_token_mean(total, (target != -100).sum(), self.world)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute decoder layers in the backward pass (``StitchedLlama.set_grad_checkpointing``)."""
        self.net.set_grad_checkpointing(enable)

    def reduce_grads(self, stitch_id: int) -> None:
        """After backward, before importance and the optimizer step: average the gradients over the
        ranks of a data-parallel run (a no-op in one process). Only ``stitch_id``'s path has any."""
        if self.world > 1:
            distributed.allreduce_grads(self.trainable().values(), self.world)

    def importance_params(self, stitch_id: int) -> list[nn.Parameter]:
        """Θ_s of spec §6: the stitch's own biases plus the LoRA parameters on its path."""
        if stitch_id not in self._theta:  # called every step: match names once per stitch
            lora = path_params(self.net, stitch_id, lambda n, p: "lora_" in n)
            self._theta[stitch_id] = list(self.biases[stitch_id]) + lora
        return self._theta[stitch_id]

    def trainable(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by qualified name."""
        return trainable_of(self)

    def param_groups(self, lr: float, lr_anchor: float | None, weight_decay: float,
                     decay_1d: bool = False) -> list[dict]:
        """AdamW groups, all at ``lr`` (PST trains no anchor weight, so SN-Net's ``lr_anchor`` does
        not apply): the LoRA matrices with ``weight_decay`` first, then the stitch biases without
        decay unless ``decay_1d`` (the usual rule for 1-D parameters, as on the vision path)."""
        return adamw_groups(self.trainable(), lr, weight_decay, decay_1d)


def make_tunable(net: StitchedLlama, cfg: LlamaTuningConfig | None = None) -> TunableLlama:
    """Settle the trainable set of ``net`` in place and wrap it; see the module docstring."""
    return TunableLlama(net, cfg or LlamaTuningConfig())


def trainable_by_kind(model: TunableLlama) -> dict[str, int]:
    """Trainable parameters by kind: LoRA in the decoder layers, LoRA on stitching layers, biases,
    and their ``total`` (``esta.tunable.count_trainable``, the one number every family reports)."""
    out = dict(lora_layers=0, lora_stitch=0, biases=0)
    for n, p in model.trainable().items():
        kind = "biases" if n.startswith("biases.") else "lora_stitch" if ".stitch_layers." in n else "lora_layers"
        out[kind] += p.numel()
    out["total"] = sum(out.values())
    return out


def family_trainable(family_name: str, cfg: LlamaTuningConfig | None = None, rule: str = "depth") -> dict[str, int]:
    """PST's trainable counts for a family from its config table (meta device: no weights)."""
    with torch.device("meta"):
        return trainable_by_kind(make_tunable(StitchedLlama(build_family(family_name), rule=rule), cfg))
