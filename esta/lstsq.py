"""Affine least squares in float64 with an optional ridge (spec §4, §11 "LS init").

Stitching layers start at the affine map that best sends front-anchor activations X to end-anchor
activations Y. LLaMA's residual stream carries a few massive-activation channels, which make X badly
conditioned, so a ridge term may shrink the weights (never the bias). The ridge is appended as extra
rows, ``[X 1; sqrt(λ) I 0] A ≈ [Y; 0]``, so one ``torch.linalg.lstsq`` call serves both cases.
"""

from __future__ import annotations

import torch

__all__ = ["affine_lstsq"]


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
    # gelsd (SVD) copes with rank-deficient X, e.g. fewer tokens than channels; it is CPU-only.
    driver = "gelsd" if design.device.type == "cpu" else None
    coef = torch.linalg.lstsq(design, target, driver=driver).solution  # (Cin + 1, Cout)
    return coef[:cin].T.contiguous(), coef[cin].contiguous()
