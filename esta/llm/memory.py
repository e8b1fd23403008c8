"""How much GPU memory a Stitched LLaMA PST training step needs, counted on the meta device (spec §11
"Memory"; issue 22): frozen anchors in their dtype, fp32 trainables with their gradients and AdamW
state, fp32 stitching layers, and the activations of the costliest stitch under gradient
checkpointing, at a batch and sequence length; and the largest batch that fits a card.

Parameters are exact (the real ``LlamaForCausalLM`` modules on the meta device, PST injected by
``esta.llm.tuning``). Activations are an estimate, stated per term: with checkpointing each decoder
layer on the path keeps its input (B·T·d in the anchors' dtype); one layer at a time is recomputed
in the backward pass, holding the inputs of its matmuls and its attention output with a fused
(flash / memory-efficient) attention kernel, B·T·(4d + 2·d_kv + 3·d_ff) values, plus the fp32 copy of
the input that each LoRA-wrapped linear of the layer keeps for its adapter (peft casts the input to the
adapter's dtype; 4·B·T·d_in bytes each, ``_lora_input_bytes``); and the logits are
held in the anchors' dtype, as fp32 for the loss and as their fp32 gradient, B·T·V·(2 + 4 + 4)
bytes. A measured peak (``bench/gpu.py``) replaces the estimate where a GPU is lent.
"""

from __future__ import annotations

import torch

from esta.llm.anchors import build_family
from esta.llm.stitch import StitchedLlama
from esta.llm.tuning import LlamaTuningConfig, make_tunable

__all__ = ["memory_plan", "largest_batch", "DTYPE_BYTES"]

DTYPE_BYTES = {"bf16": 2, "fp32": 4}
GIB = 2**30


def _layer_values(config) -> int:
    """Values one decoder layer holds per token while it is recomputed and backpropagated."""
    d, ffn = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    return 4 * d + 2 * kv + 3 * ffn


def _lora_input_bytes(model, anchor: int) -> int:
    """Bytes per token of the fp32 inputs the LoRA-wrapped linears of one decoder layer of ``anchor``
    keep for backward (peft casts a linear's input to the fp32 adapter before ``lora_A``)."""
    prefix = f"net.anchors.{anchor}.model.layers.0."
    return sum(4 * m.in_features for n, m in model.named_modules()
               if n.startswith(prefix) and hasattr(m, "lora_A") and hasattr(m, "in_features"))


def memory_plan(family_name: str, batch: int, seq_len: int, dtype: str = "bf16", rule: str = "depth",
                pst: LlamaTuningConfig | None = None, grad_checkpointing: bool = True) -> dict:
    """Bytes of one PST training step of ``family_name`` at ``batch`` x ``seq_len`` tokens (the costliest
    stitch's activations), by term; see the module docstring. ``grad_checkpointing`` False keeps every
    layer's activations instead of its input only."""
    if batch < 1 or seq_len < 1:
        raise ValueError(f"need batch >= 1 and seq_len >= 1, got {batch}, {seq_len}")
    with torch.device("meta"):
        net = StitchedLlama(build_family(family_name), rule=rule)
        anchor_params = sum(p.numel() for a in net.anchors for p in a.parameters())
        layer_params = sum(p.numel() for p in net.stitch_layers.parameters())
        model = make_tunable(net, pst or LlamaTuningConfig())
        trainable = sum(p.numel() for p in model.trainable().values())
        lora = [_lora_input_bytes(model, a) for a in range(len(net.anchors))]
    width = DTYPE_BYTES[dtype]
    tokens = batch * seq_len
    activations = 0
    for s in net.table:  # the stitch that holds the most: its layers, widths and its head's vocabulary
        held = 0
        for a, layers in net.segments(s.stitch_id):
            config = net.anchors[a].config
            per_layer = config.hidden_size * width if grad_checkpointing else _layer_values(config) * width + lora[a]
            held += len(layers) * tokens * per_layer
        end = net.anchors[s.end].config
        recompute = max(_layer_values(net.anchors[a].config) * width + lora[a] for a, _ in net.segments(s.stitch_id))
        held += tokens * recompute if grad_checkpointing else 0
        held += tokens * end.vocab_size * (width + 4 + 4)  # logits, their fp32 copy and gradient
        activations = max(activations, held)
    terms = dict(
        anchors=anchor_params * width,  # frozen, in the configured dtype
        stitching_layers=layer_params * 4,  # fp32 (LS-fitted, frozen in PST)
        trainable=trainable * 4,  # fp32 master weights
        gradients=trainable * 4,
        adamw_state=trainable * 8,  # exp_avg and exp_avg_sq, fp32
        activations=activations,
    )
    return dict(family=family_name, batch=batch, seq_len=seq_len, dtype=dtype, grad_checkpointing=grad_checkpointing,
                trainable_params=trainable, bytes=terms, total_bytes=sum(terms.values()),
                total_gib=sum(terms.values()) / GIB)


def largest_batch(family_name: str, seq_len: int, budget_bytes: float, headroom: float = 0.9, **kw) -> int:
    """The largest batch whose ``memory_plan`` stays under ``headroom`` x ``budget_bytes`` (allocator
    fragmentation and the CUDA context take the rest); 0 when not even batch 1 fits."""
    one, two = (memory_plan(family_name, b, seq_len, **kw)["total_bytes"] for b in (1, 2))
    per_sample, fixed = two - one, 2 * one - two  # the plan is linear in the batch
    return max(0, int((headroom * budget_bytes - fixed) // per_sample))
