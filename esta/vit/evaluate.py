"""Top-1 accuracy of stitches on a split (ESTA §4; spec §7 `deploy`, §9).

Where stitches share their front prefix's parameters (SN-Net, or PST without stitch-specific
biases), each front anchor's blocks run once per batch and every stitch starting from that anchor
reuses the cached block outputs: SN-Net's evaluate-all selection then costs about 80 % of one
forward per stitch for ViT-Ti/S/B. ESTA stitches own their biases in every block, so each runs its
own forward.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils.data import Dataset

from esta.vit.tuning import TunableViT
from esta.train import iterate_batches

__all__ = ["evaluate", "predict", "stitch_losses"]


@torch.no_grad()
def predict(model: TunableViT, x: torch.Tensor, stitch_ids: list[int]) -> dict[int, torch.Tensor]:
    """Logits of each stitch for one batch, reusing front prefixes where parameters are shared."""
    if not model.shares_prefix:
        return {sid: model(x, sid) for sid in stitch_ids}
    net = model.net
    by_front = defaultdict(list)
    for sid in stitch_ids:
        by_front[net.stitch(sid).front].append(sid)
    out = {}
    for front, sids in by_front.items():
        cuts = [net.depths[front] - 1 if net.table[s].is_anchor else net.table[s].j for s in sids]
        states = net.front_states(x, front, upto=max(cuts))
        for sid, cut in zip(sids, cuts):
            out[sid] = net.tail(states[cut], sid)
    return out


@torch.no_grad()
def evaluate(
    model: TunableViT,
    data: Dataset,
    stitch_ids: list[int] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> dict[int, float]:
    """Accuracy in [0, 1] of every stitch in ``stitch_ids`` (all by default) on ``data``."""
    device = torch.device(device)
    ids = list(range(model.net.num_stitches)) if stitch_ids is None else list(stitch_ids)
    for sid in ids:
        model.net.stitch(sid)  # range check before any work
    was_training = model.training
    model.to(device).eval()
    correct = dict.fromkeys(ids, 0)
    total = 0
    use_amp = device.type == "cuda"
    n = len(data)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    for x, y in iterate_batches(data, batches, num_workers, pin=use_amp):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = predict(model, x, ids)
        for sid, lg in logits.items():
            correct[sid] += (lg.argmax(-1) == y).sum().item()
        total += y.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluation split is empty")
    return {sid: correct[sid] / total for sid in ids}


@torch.no_grad()
def stitch_losses(model: TunableViT, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                  device: torch.device | str = "cpu") -> dict[int, float]:
    """Mean cross-entropy of every stitch on the fixed examples ``(x, y)``, in eval mode (the
    ``loss_batch`` deployment score, ``esta.scores``), with prefixes shared where parameters are."""
    device = torch.device(device)
    ids = list(range(model.net.num_stitches))
    was_training = model.training
    model.to(device).eval()
    total = dict.fromkeys(ids, 0.0)
    use_amp = device.type == "cuda"
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = predict(model, xb, ids)
        for sid, lg in logits.items():
            total[sid] += torch.nn.functional.cross_entropy(lg.float(), yb, reduction="sum").item()
    model.train(was_training)
    if len(y) == 0:
        raise ValueError("no examples for the loss_batch score")
    return {sid: total[sid] / len(y) for sid in ids}
