"""Affine least squares in float64 with an optional ridge (spec §4, §11 "LS init").

Stitching layers start at the affine map that best sends front-anchor activations X to end-anchor
activations Y. LLaMA's residual stream carries a few massive-activation channels, which make X badly
conditioned, so a ridge term may shrink the weights (never the bias). The ridge is appended as extra
rows, ``[X 1; sqrt(λ) I 0] A ≈ [Y; 0]``, so one ``torch.linalg.lstsq`` call serves both cases. The
solve runs where the activations are: SVD-based ``gelsd`` on the CPU (it copes with rank-deficient X),
QR-based ``gels`` (the only CUDA driver) on a GPU.

Positions that share one stitching layer (SN-Net's paired rule) are fitted one by one and the layer
takes the element-wise mean of their solutions (spec §4); ``fit_shared_layers`` does that for both
families and reports each position's residual under the layer actually installed.
"""

from __future__ import annotations

import torch

__all__ = ["affine_lstsq", "fit_shared_layers"]


def affine_lstsq(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``y ≈ x @ W.T + b``; x (M, Cin), y (M, Cout) -> W (Cout, Cin), b (Cout), both float64.

    ``ridge`` is relative to the mean squared activation, ``λ = ridge · ‖x‖²_F / Cin``, so one value
    suits anchors whose activation scales differ by orders of magnitude; 0 is plain least squares.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need x (M, Cin) and y (M, Cout) with the same M, got {tuple(x.shape)} and {tuple(y.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x, y = x.double(), y.double()
    rows, cin = x.shape
    design = torch.cat([x, x.new_ones(rows, 1)], dim=1)  # (M, Cin + 1): the last column fits the bias
    target = y
    if ridge > 0:
        lam = ridge * x.pow(2).sum() / cin
        penalty = torch.cat([torch.eye(cin, dtype=x.dtype, device=x.device) * lam.sqrt(), x.new_zeros(cin, 1)], dim=1)
        design = torch.cat([design, penalty])
        target = torch.cat([y, y.new_zeros(cin, y.shape[1])])
    # gelsd (SVD) copes with rank-deficient X, e.g. fewer tokens than channels; it is CPU-only, and
    # CUDA offers gels (QR, full rank assumed: a ridge makes any X full rank).
    driver = "gelsd" if design.device.type == "cpu" else "gels"
    coef = torch.linalg.lstsq(design, target, driver=driver).solution  # (Cin + 1, Cout)
    return coef[:cin].T.contiguous(), coef[cin].contiguous()


def fit_shared_layers(positions, ridge: float = 0.0):
    """Fit every stitching position and install one affine map per stitching layer.

    ``positions``: ``(layer_key, stitch_id, x, y)`` per position, ``x`` (M, Cin) the front activations
    and ``y`` (M, Cout) the end activations it should map to. Positions with the same ``layer_key``
    share a layer, which takes the element-wise mean of their solutions (SN-Net's rule).
    Returns ``(layers, residual)``: ``layers[layer_key] = (W, b)`` (float64) and
    ``residual[stitch_id]`` = ``‖x Wᵀ + b − y‖ / ‖y‖`` under the *installed* (averaged) layer.
    """
    positions = list(positions)
    fits: dict = {}
    for key, _, x, y in positions:
        fits.setdefault(key, []).append(affine_lstsq(x, y, ridge))
    layers = {key: (torch.stack([w for w, _ in sols]).mean(0), torch.stack([b for _, b in sols]).mean(0))
              for key, sols in fits.items()}
    residual = {}
    for key, sid, x, y in positions:
        w, b = layers[key]
        x, y = x.to(w), y.to(w)
        residual[sid] = ((x @ w.T + b - y).norm() / y.norm()).item()
    return layers, residual
