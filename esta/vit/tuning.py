"""Parameter-efficient stitch fine-tuning, PST (ESTA §3, §4 "other PEFT techniques"; spec §5), and
SN-Net's full fine-tuning.

PST freezes the anchors and the least-squares-initialised stitching layers and trains
- a *shared* (stitch-agnostic) PEFT module on every anchor block, chosen by ``peft``: LoRA (default,
  the paper's), DoRA or IA³ injected with peft, or a Houlsby Adapter / AdaptFormer bottleneck
  (``esta.vit.adapters``); all stitches passing through a block share it;
- a shared LoRA on every stitching layer, whatever ``peft`` is;
- *stitch-specific biases*: every stitch owns a copy of the bias of each ``nn.Linear`` on its path
  (qkv, proj, fc1, fc2, its stitching layer, its head), initialised from the pretrained bias;
- the anchors' classification heads (weights shared by the stitches ending in that anchor).

Stitch-specific biases are separate ``nn.Parameter`` objects (one ``ParameterDict`` per stitch), so
biases of stitches not sampled in a step get ``grad=None`` and AdamW leaves them untouched (no
momentum, no decay). While training they are passed into the forward with
``torch.func.functional_call``; the stitch is an argument, never stored state.

For serving (spec §12, ``for_inference``) the model is readied once: the shared LoRA / DoRA / IA³ is
merged into the base weights and the wrappers removed, and a forward copies its stitch's own biases
into the linears in place (``activate``: a few vectors, nothing when the stitch is already active), so
a stitch runs at the speed of its standalone export. Bottleneck adapters (Houlsby, AdaptFormer) cannot
be merged and stay as modules (``merged_adapters`` says which).

``mode="full"`` is SN-Net's direct adaptation: every parameter of anchors, stitching layers and
heads trains. ``stitch_biases=False`` is the ablation where PST trains the shared biases instead.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from esta.tunable import adamw_groups, path_params, trainable_of
from esta.vit.stitch import StitchedViT

__all__ = ["TuningConfig", "TunableViT", "make_tunable", "LORA_TARGETS", "PEFT_METHODS"]

# LoRA / DoRA targets in the anchor blocks: the self-attention projections (and the MLP). A bare
# "proj" would also match patch_embed.proj (a Conv2d), so modules are matched by their full path.
LORA_TARGETS = {
    "attn": r".*\.attn\.(qkv|proj)",
    "attn_mlp": r".*\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))",
}
STITCH_TARGETS = r"stitch_layers\.\d+\.\d+"  # every stitching layer keeps a LoRA in every method
# IA³ [decision]: timm fuses q, k, v in one linear, so its output scaling covers keys and values (and
# queries); the FFN's intermediate activations are scaled at the input of fc2 (peft's feedforward mode).
IA3_TARGETS, IA3_FEEDFORWARD = r".*\.(attn\.qkv|mlp\.fc2)", r".*\.mlp\.fc2"
PEFT_METHODS = ("lora", "dora", "ia3", "adapter", "adaptformer")
# Names of the parameters PEFT adds (peft's prefixes, and esta.vit.adapters' layer names)
_ADAPTER_TOKENS = ("lora_", "ia3_", "adapter_")
_SEP = ":"  # nn.ParameterDict keys may not contain "."
_NO_DECAY = frozenset({"pos_embed", "cls_token", "dist_token", "reg_token"})  # timm ViT's no_weight_decay()


@dataclass
class TuningConfig:
    """Which parameters train. ``mode`` is "pst" (ESTA) or "full" (SN-Net)."""

    mode: str = "pst"
    rank: int = 8  # LoRA / DoRA rank, and the stitching layers' LoRA rank in every method
    alpha: float | None = None  # None: alpha = rank, so the LoRA scaling is 1 [decision]
    dropout: float = 0.0
    targets: str = "attn"
    stitch_biases: bool = True
    peft: str = "lora"
    # Bottleneck widths [decision]: per block, LoRA r = 8 on qkv + proj trains 8·(4d + 2d) = 48d;
    # two Houlsby adapters of width m train ~4dm (m = 12), one AdaptFormer ~2dm (m = 24).
    adapter_bottleneck: int = 12
    adaptformer_bottleneck: int = 24
    adaptformer_scale: float = 0.1  # AdaptFormer's s

    def __post_init__(self):
        if self.mode not in ("pst", "full"):
            raise ValueError(f"tuning mode must be 'pst' or 'full', got {self.mode!r}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.targets not in LORA_TARGETS:
            raise ValueError(f"unknown LoRA targets {self.targets!r}; known: {sorted(LORA_TARGETS)}")
        if self.peft not in PEFT_METHODS:
            raise ValueError(f"unknown PEFT method {self.peft!r}; known: {list(PEFT_METHODS)}")
        if min(self.adapter_bottleneck, self.adaptformer_bottleneck) < 1:
            raise ValueError("adapter bottlenecks must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def is_adapter_param(name: str) -> bool:
    """Whether ``name`` is a parameter PEFT added (LoRA A/B, DoRA magnitude, IA³ vector, adapter)."""
    return any(part.startswith(_ADAPTER_TOKENS) for part in name.split("."))


def _is_head_weight(name: str) -> bool:
    """Whether ``name`` is a weight of an anchor's head (``head.weight``; a segmentation head's
    ``head.conv1.weight`` / ``head.conv2.weight``): shared by stitches, not in any stitch's Θ_s."""
    return ".head." in name and name.endswith(".weight")


def _linear_biases(net: StitchedViT) -> list[str]:
    """Names of the biases of every ``nn.Linear`` of the anchors and stitching layers (not the
    adapters' own linears, which are shared PEFT parameters; peft's LoRA A/B have no bias)."""
    return [
        f"{name}.bias"
        for name, m in net.named_modules()
        if isinstance(m, nn.Linear) and m.bias is not None and not is_adapter_param(name)
    ]


def inject_peft(net: StitchedViT, cfg: TuningConfig) -> None:
    """Add ``cfg.peft`` to every anchor block and a LoRA to every stitching layer, in place; every
    parameter of ``net`` but the added ones is then frozen."""
    # peft pulls in transformers (seconds of import time), so only PST imports it.
    from peft import IA3Config, LoraConfig, inject_adapter_in_model

    def lora(targets: str, dora: bool = False) -> LoraConfig:
        return LoraConfig(r=cfg.rank, lora_alpha=cfg.rank if cfg.alpha is None else cfg.alpha,
                          lora_dropout=cfg.dropout, target_modules=targets, bias="none", use_dora=dora)

    if cfg.peft in ("lora", "dora"):
        inject_adapter_in_model(lora(LORA_TARGETS[cfg.targets], dora=cfg.peft == "dora"), net)
    elif cfg.peft == "ia3":
        inject_adapter_in_model(IA3Config(target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD), net)
    else:
        from esta.vit.adapters import inject_bottleneck

        wide = cfg.adapter_bottleneck if cfg.peft == "adapter" else cfg.adaptformer_bottleneck
        inject_bottleneck(net, cfg.peft, wide, 1.0 if cfg.peft == "adapter" else cfg.adaptformer_scale)
    if len(net.stitch_layers):
        # A second injection into other modules: each module holds one adapter, so peft's warning
        # about a model with several adapters does not apply.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(lora(STITCH_TARGETS), net)
    for n, p in net.named_parameters():
        p.requires_grad_(is_adapter_param(n))
    if not any(p.requires_grad for p in net.parameters()):
        raise ValueError(f"PEFT method {cfg.peft!r} with targets {cfg.targets!r} matched no module")


class TunableViT(nn.Module):
    """A ``StitchedViT`` with its trainable set settled: ``model(x, stitch_id)`` -> logits; implements
    ``esta.tunable.TunableStitches`` (one process on one device: rank 0, no gradient reduction)."""

    rank = 0

    def __init__(self, net: StitchedViT, cfg: TuningConfig):
        super().__init__()
        self.cfg = cfg
        self.net = net
        self._theta: dict[int, list[nn.Parameter]] = {}  # importance_params cache
        self.deployed, self._active, self._slots = False, None, {}  # for_inference / activate
        if cfg.mode == "full":
            net.requires_grad_(True)
            self.biases = None
            return
        inject_peft(net, cfg)
        # Heads are new for the task: their weights train, shared by the stitches ending there (a
        # classification head is one linear, a segmentation head two, esta.vit.seg).
        for anchor in net.anchors:
            for m in anchor.head.modules():
                if isinstance(m, nn.Linear):
                    m.weight.requires_grad_(True)
        bias_names = _linear_biases(net)
        params = dict(net.named_parameters())
        if cfg.stitch_biases:
            self.biases = nn.ModuleDict(
                {
                    str(s.stitch_id): nn.ParameterDict(
                        {
                            n.replace(".", _SEP): nn.Parameter(params[n].detach().clone())
                            for n in bias_names
                            if net.on_path(n, s.stitch_id)
                        }
                    )
                    for s in net.table
                }
            )
        else:
            self.biases = None
            for n in bias_names:
                params[n].requires_grad_(True)

    @property
    def table(self):
        return self.net.table

    @property
    def shares_prefix(self) -> bool:
        """Whether stitches with the same front anchor share the parameters of their prefix."""
        return self.biases is None

    def biases_for(self, stitch_id: int) -> dict[str, nn.Parameter]:
        """Stitch ``stitch_id``'s own biases keyed by the net parameter they stand in for (none when
        stitches share their biases: full fine-tuning, or PST without stitch biases)."""
        self.net.stitch(stitch_id)  # range check
        if self.biases is None:
            return {}
        return {k.replace(_SEP, "."): p for k, p in self.biases[str(stitch_id)].items()}

    def forward(self, x: torch.Tensor, stitch_id: int) -> torch.Tensor:
        if self.biases is None:
            return self.net(x, stitch_id)
        if self.deployed:
            self.activate(stitch_id)
            return self.net(x, stitch_id)
        return functional_call(self.net, self.biases_for(stitch_id), (x, stitch_id))

    @property
    def merged_adapters(self) -> bool:
        """Whether ``for_inference`` merges the shared PEFT module away (all but bottleneck adapters)."""
        return self.cfg.mode == "full" or self.cfg.peft not in ("adapter", "adaptformer")

    @torch.no_grad()
    def for_inference(self) -> TunableViT:
        """Ready the model for serving, once and in place (see the module docstring): eval mode, every
        peft layer (LoRA, DoRA, IA³ on anchor blocks and stitching layers) merged into its base linear
        and unwrapped, nothing requires grad, and each stitch's biases bound to the linears they stand
        in for. The model then serves only: its trainable set is gone."""
        if self.deployed:
            return self
        from peft.tuners.tuners_utils import BaseTunerLayer  # imported lazily, see inject_peft

        self.eval()
        for name, module in list(self.net.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge(safe_merge=True)
                parent, _, child = name.rpartition(".")
                setattr(self.net.get_submodule(parent), child, module.get_base_layer())
        self.requires_grad_(False)
        if self.biases is not None:
            params = dict(self.net.named_parameters())

            def target(key: str) -> nn.Parameter:  # a merged wrapper's base_layer is now the linear itself
                name = key.replace(_SEP, ".")
                return params[name] if name in params else params[name.replace(".base_layer.", ".")]

            self._slots = {int(sid): ([target(k) for k in own], list(own.values())) for sid, own in self.biases.items()}
        self.deployed, self._active = True, None
        return self

    @torch.no_grad()
    def activate(self, stitch_id: int) -> None:
        """Copy stitch ``stitch_id``'s own biases into the linears of its path, in place (after
        ``for_inference``); nothing is copied when it is active already, or when stitches share biases."""
        if not self.deployed:
            raise RuntimeError("activate() needs for_inference() first: while training, biases are arguments")
        if self._active == stitch_id or self.biases is None:
            return
        self.net.stitch(stitch_id)  # range check, naming the valid ids
        torch._foreach_copy_(*self._slots[int(stitch_id)])  # one dispatch for the ~50 vectors
        self._active = stitch_id

    def loss(self, batch: tuple[torch.Tensor, ...], stitch_id: int) -> torch.Tensor:
        """Cross-entropy of stitch ``stitch_id`` on a batch ``(images, labels)``: what the training
        loop minimises (every family's tunable model answers ``loss``)."""
        x, y = batch
        return F.cross_entropy(self(x, stitch_id), y)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute anchor blocks in the backward pass (``StitchedViT.set_grad_checkpointing``)."""
        self.net.set_grad_checkpointing(enable)

    def reduce_grads(self, stitch_id: int) -> None:
        """A vision job is one process (spec §1): its gradients are the batch's already."""

    def importance_params(self, stitch_id: int) -> list[nn.Parameter]:
        """Θ_s of spec §6: the stitch's own biases plus the LoRA parameters on its path (with shared
        biases, the shared ones on its path). Head weights are not in Θ_s. Empty in full mode, where
        SN-Net samples uniformly."""
        if self.cfg.mode == "full":
            return []
        if stitch_id not in self._theta:  # called every step: match names once per stitch
            own = list(self.biases[str(stitch_id)].values()) if self.biases is not None else []
            shared = path_params(self.net, stitch_id, lambda n, p: p.requires_grad and not _is_head_weight(n))
            self._theta[stitch_id] = own + shared
        return self._theta[stitch_id]

    def trainable(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by qualified name."""
        return trainable_of(self)

    def param_groups(self, lr: float, lr_anchor: float | None, weight_decay: float,
                     decay_1d: bool = False) -> list[dict]:
        """AdamW groups: in full mode SN-Net's anchor weights take ``lr_anchor`` and the stitching
        layers and heads ``lr``; in PST everything takes ``lr``. Unless ``decay_1d``, 1-D parameters
        (biases, LayerNorm, PST's stitch biases) and pos_embed/cls_token get no weight decay
        (timm's ``param_groups_weight_decay`` rule and ``VisionTransformer.no_weight_decay``).
        The first group is the ``lr`` group with decay (the one the training log reports)."""

        def lr_of(name: str) -> float:
            is_anchor_weight = name.startswith("net.anchors.") and ".head." not in name
            return lr_anchor if self.cfg.mode == "full" and lr_anchor is not None and is_anchor_weight else lr

        return adamw_groups(self.trainable(), lr, weight_decay, decay_1d, lr_of, _NO_DECAY)


def make_tunable(net: StitchedViT, cfg: TuningConfig) -> TunableViT:
    """Settle the trainable set of ``net`` in place and wrap it; see the module docstring."""
    return TunableViT(net, cfg)
