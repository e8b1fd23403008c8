"""Semantic segmentation over any stitch (the ESTA paper's open question 1; spec §14).

A segmentation model is the stitched ViT of ``esta.vit.stitch`` with a different head: each anchor's
classification head is replaced by a SETR-naive head (Zheng et al., CVPR 2021; SN-Netv2's dense head)
that takes the patch tokens of the stitch's output, applies a 1x1 conv, a norm and ReLU, a 1x1 conv to
the classes, and upsamples the logits bilinearly to the input. A 1x1 conv over the token grid is a
linear map per token, so the two convs are ``nn.Linear`` on the tokens before the reshape: the head's
biases are then linear biases like every other, and PST gives each stitch its own copy of them
(``esta.vit.tuning``) with nothing seg-specific in the tuning code.

Every other piece is the classification one: timm's ``forward_head`` with ``global_pool=''`` hands the
head the unpooled tokens, so ``StitchedViT``, ``TunableViT`` (PST / full fine-tuning, one training loop
``esta.train``), ``esta.vit.stitch.ls_init`` and the FLOPs counter (``anchor_costs``, which runs the
head at the anchors' ``img_size``) work unchanged. Anchors are built at the segmentation resolution by
``esta.vit.anchors.family_at``: timm resamples the pretrained position embedding on load
(``resample_abs_pos_embed``), as SETR and SN-Netv2 do for 512 px inputs.

Labels are int64 masks with ``IGNORE`` (-100, ``F.cross_entropy``'s default ``ignore_index``) on the
pixels that do not count, so ``TunableViT.loss`` is the segmentation loss as written.

[decision] The norm is a LayerNorm without affine parameters: the head's trainable set is then its two
weight matrices plus its (stitch-specific) biases, the same kinds as a classification head's; SETR's
BatchNorm would share running statistics across stitches of very different feature scales.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from esta.tensors import load_tensors_file, load_trainable
from esta.vit.anchors import build_anchor, check_family, family, family_at, weights_meta
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TunableViT, TuningConfig, make_tunable

__all__ = ["IGNORE", "SegHead", "make_segmenter", "build_seg_family", "seg_anchor", "seg_costs", "assemble_seg", "seg_arch",
           "confusion", "seg_scores", "evaluate_seg"]

IGNORE = -100  # label of pixels that do not count: F.cross_entropy's default ignore_index


class SegHead(nn.Module):
    """SETR-naive head: tokens (B, P + g*g, C) -> logits (B, classes, g*patch, g*patch).

    ``conv1`` and ``conv2`` are the two 1x1 convs (as per-token linears); ``prefix`` tokens (cls,
    registers) are dropped; the grid is square (the inputs are square crops)."""

    def __init__(self, embed_dim: int, num_classes: int, hidden: int, patch: int, prefix: int):
        super().__init__()
        if min(embed_dim, num_classes, hidden, patch) < 1 or prefix < 0:
            raise ValueError(f"bad SegHead shape: embed_dim={embed_dim}, classes={num_classes}, hidden={hidden}, "
                             f"patch={patch}, prefix={prefix}")
        self.conv1 = nn.Linear(embed_dim, hidden)
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.act = nn.ReLU()
        self.conv2 = nn.Linear(hidden, num_classes)
        self.patch, self.prefix = patch, prefix

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = h[:, self.prefix :]  # (B, g*g, C)
        g = math.isqrt(t.shape[1])
        if g * g != t.shape[1]:
            raise ValueError(f"SegHead needs a square token grid, got {t.shape[1]} patch tokens")
        z = self.conv2(self.act(self.norm(self.conv1(t))))  # (B, g*g, K)
        z = z.transpose(1, 2).reshape(z.shape[0], -1, g, g)  # (B, K, g, g)
        return F.interpolate(z, scale_factor=self.patch, mode="bilinear", align_corners=False)


def make_segmenter(vit: nn.Module, num_classes: int, hidden: int) -> nn.Module:
    """Turn a timm ViT into a segmenter in place: no pooling, a ``SegHead`` as its ``head``."""
    vit.reset_classifier(0, global_pool="")
    vit.head = SegHead(vit.embed_dim, num_classes, hidden, vit.patch_embed.patch_size[0], vit.num_prefix_tokens)
    vit.num_classes = num_classes
    return vit


def seg_arch(vit: nn.Module) -> dict:
    """What rebuilds a segmenter's head (``make_segmenter``'s arguments), for exported stitches."""
    return dict(num_classes=vit.head.conv2.out_features, hidden=vit.head.conv1.out_features)


def build_seg_family(name, num_classes: int, img_size: int, hidden: int, weights: list | None = None,
                     task: str | None = None) -> list[nn.Module]:
    """Every anchor of family ``name`` at ``img_size`` px with a new ``SegHead``.

    An upstream weight file is loaded by timm (position embedding resampled to the new grid); a file
    this workflow wrote for ``task`` (an anchor fine-tuned alone, SN-Net's adapt stage) is a whole
    segmenter and is loaded strictly, head included."""
    specs = family(family_at(name, img_size))
    weights = [None] * len(specs) if weights is None else list(weights)
    if len(weights) != len(specs):
        raise ValueError(f"family {[s.name for s in specs]} has {len(specs)} anchors but {len(weights)} weight "
                         "files were given")
    anchors = [seg_anchor(spec, num_classes, hidden, w, task) for spec, w in zip(specs, weights)]
    check_family(anchors, [s.name for s in specs])
    return anchors


def seg_anchor(spec, num_classes: int, hidden: int, weights: str | Path | None = None,
               task: str | None = None) -> nn.Module:
    """One segmenter anchor (``spec`` at its resolution); ``weights`` as in ``build_seg_family``."""
    own = weights is not None and task is not None and weights_meta(weights).get("task") == task
    vit = make_segmenter(build_anchor(spec, 1, None if own else weights), num_classes, hidden)
    if own:
        tensors, _ = load_tensors_file(weights)
        missing, unexpected = vit.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights} does not fit segmenter {spec.name} ({spec.kwargs}) with {num_classes} "
                             f"classes: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return vit


def assemble_seg(family_name, num_classes: int, img_size: int, hidden: int, anchor_files: list | None = None,
                 stitch_file: str | Path | None = None, tuning_cfg: TuningConfig | None = None,
                 state_file: str | Path | None = None, task: str | None = None) -> TunableViT:
    """Segmenter anchors -> StitchedViT (+ stitching layers) -> trainable set (+ trained state), as
    ``esta.vit.build.assemble`` does for classification."""
    from esta.vit.build import _load_strict

    net = StitchedViT(build_seg_family(family_name, num_classes, img_size, hidden, anchor_files, task))
    if stitch_file is not None:
        _load_strict(net.stitch_layers, load_tensors_file(stitch_file)[0], stitch_file)
    model = make_tunable(net, tuning_cfg or TuningConfig())
    if state_file is not None:
        load_trainable(model, load_tensors_file(state_file)[0], state_file)
    return model


def seg_costs(family_name, num_classes: int, img_size: int, hidden: int):
    """MACs per image at ``img_size`` (head included) and parameters of every stitch of the plain family,
    counted on the meta device: what a deployed (merged) stitch costs, without a PST model's LoRA branches."""
    from esta.vit.stitch import stitch_costs

    with torch.device("meta"):
        anchors = build_seg_family(family_name, num_classes, img_size, hidden)
    return stitch_costs(anchors, [s.name for s in family(family_at(family_name, img_size))])


# ---------------------------------------------------------------------------------------------
# Metrics: mIoU and pixel accuracy from a confusion matrix (mmseg's definitions)


def confusion(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) confusion matrix (rows: true class, columns: predicted) of logits (B, K, H, W) against
    labels (B, H, W), ``IGNORE`` pixels left out (torchmetrics' ``multiclass_confusion_matrix``)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(logits.argmax(1), labels, num_classes, ignore_index=IGNORE,
                                       validate_args=False)


def seg_scores(conf: torch.Tensor) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a confusion matrix. A class that is neither in the
    labels nor predicted has no IoU (NaN) and is left out of the mean (mmseg's ``nanmean``)."""
    conf = conf.double()
    tp = conf.diag()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
    total = conf.sum()
    if total == 0:
        raise ValueError("no labelled pixel to score (every pixel is ignored)")
    return dict(miou=float(iou.nanmean()), pixel_acc=float(tp.sum() / total), iou=iou.tolist())


@torch.no_grad()
def evaluate_seg(model: TunableViT, data: Dataset, stitch_ids: list[int] | None = None, batch_size: int = 32,
                 device: torch.device | str = "cpu", num_workers: int = 0) -> dict[int, dict]:
    """``seg_scores`` of every stitch in ``stitch_ids`` (all by default) on ``data`` of (image, mask);
    prefixes are shared where parameters are (``esta.vit.evaluate.predict``)."""
    from esta.train import iterate_batches
    from esta.vit.evaluate import predict

    device = torch.device(device)
    ids = list(range(model.net.num_stitches)) if stitch_ids is None else list(stitch_ids)
    for sid in ids:
        model.net.stitch(sid)  # range check before any work
    k = model.net.anchors[0].head.conv2.out_features
    was_training = model.training
    model.to(device).eval()
    conf = defaultdict(lambda: torch.zeros(k, k, dtype=torch.long, device=device))
    use_amp = device.type == "cuda"
    n = len(data)
    for x, y in iterate_batches(data, [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)],
                                num_workers, pin=use_amp):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = predict(model, x, ids)
        for sid, lg in logits.items():
            conf[sid] += confusion(lg.float(), y, k)
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluation split is empty")
    return {sid: seg_scores(conf[sid].cpu()) for sid in ids}
