"""Analyses the paper leaves open (spec §10) and the ablation/cost tables (spec §9).

- Does a deployment score predict the accuracy a stitch really has? ``esta.compare.judge_run`` (Spearman
  rank correlation with test accuracy) and ``selection_ablation`` (the deployed curve of each score).
- ``gradient_cosines``: interference between stitches through the shared LoRA. For two stitches on
  the same batch, the cosine between their LoRA gradients (A and B of each module, concatenated)
  over the LoRA modules both paths use; taken on snapshots of training (``SNAPSHOT_FRACS``) of
  models trained with and without stitch-specific biases.
- ``stored_params``: what must be stored to deploy a set of stitches of a trained model.

The model functions take any family's tunable model (``esta.tunable.TunableStitches``) and a batch
as the family's data set yields it (``(images, labels)``, ``(input_ids, attention_mask, labels)``).
- ``visit_table``: how often training visited each stitch, against its cost, and whether the
  stitches that were deployed were trained enough.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pandas as pd

from esta.stitches import on_path

if TYPE_CHECKING:  # the table functions run in jobs that never import torch
    import torch

    from esta.tunable import TunableStitches

__all__ = ["SNAPSHOT_FRACS", "snapshot_steps", "lora_gradients",
           "gradient_cosines", "summarize_cosines", "stored_params", "selection_ablation", "visit_counts",
           "visit_table"]

# [decision] Points of training at which gradient interference is measured (spec §10: "e.g. 10 %,
# 50 %, 100 %"): ESTA's training saves its trainable state after these fractions of its steps.
SNAPSHOT_FRACS = (0.1, 0.5, 1.0)


def snapshot_steps(total_steps: int, fracs=SNAPSHOT_FRACS) -> list[int]:
    """Step counts after which a snapshot is taken: round(frac * total), at least 1, distinct."""
    return sorted({min(total_steps, max(1, round(f * total_steps))) for f in fracs})


def _lora_params(model: TunableStitches, stitch_id: int) -> dict[str, list[torch.nn.Parameter]]:
    """LoRA parameters on a stitch's path, grouped by the module they adapt (A before B)."""
    groups: dict[str, list] = {}
    for name, p in sorted(model.net.named_parameters()):
        if "lora_" in name and model.net.on_path(name, stitch_id):
            groups.setdefault(name.split(".lora_")[0], []).append(p)
    return groups


def lora_gradients(model: TunableStitches, batch: tuple[torch.Tensor, ...], stitch_id: int) -> dict[str, torch.Tensor]:
    """Gradient of the batch loss through ``stitch_id`` w.r.t. each LoRA module on its path (A, B
    flattened and concatenated), keyed by module name."""
    import torch

    groups = _lora_params(model, stitch_id)
    if not groups:
        raise ValueError("the model has no LoRA parameters (gradient interference needs PST)")
    model.zero_grad(set_to_none=True)
    model.loss(batch, stitch_id).backward()
    out = {m: torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in ps]).detach().clone()
           for m, ps in groups.items()}
    model.zero_grad(set_to_none=True)
    return out


def gradient_cosines(model: TunableStitches, batch: tuple[torch.Tensor, ...],
                     stitch_ids: list[int] | None = None) -> pd.DataFrame:
    """Cosine between the shared-LoRA gradients of every pair of stitches that share at least one
    LoRA module, over the modules both use. Pairs where either gradient is zero on the shared
    modules (no direction, e.g. LoRA B still zero) are left out, so the column has no NaN.
    Columns: stitch_a, stitch_b, shared_modules, cosine."""
    import torch

    ids = list(range(model.net.num_stitches)) if stitch_ids is None else list(stitch_ids)
    was_training = model.training
    model.eval()
    grads = {s: lora_gradients(model, batch, s) for s in ids}
    model.train(was_training)
    rows = []
    for a, b in itertools.combinations(ids, 2):
        shared = sorted(grads[a].keys() & grads[b].keys())
        if not shared:
            continue
        ga = torch.cat([grads[a][m] for m in shared]).double()
        gb = torch.cat([grads[b][m] for m in shared]).double()
        na, nb = ga.norm(), gb.norm()
        if na == 0 or nb == 0:
            continue
        rows.append(dict(stitch_a=a, stitch_b=b, shared_modules=len(shared), cosine=float(ga @ gb / (na * nb))))
    return pd.DataFrame(rows, columns=["stitch_a", "stitch_b", "shared_modules", "cosine"])


def stored_params(model: TunableStitches, stitch_ids: list[int]) -> dict[str, int]:
    """Parameters stored to deploy ``stitch_ids`` from one trained model, counting only what those
    stitches run through (a stitching layer or an anchor no deployed stitch uses is not stored).

    ``task``: what is specific to the task — the trained parameters on a deployed path (PST: LoRA,
    heads, the deployed stitches' own biases; full fine-tuning: all of it) and the LS-fitted
    stitching layers on a deployed path (fitted on the task's data even when frozen). ``total``:
    plus the frozen pretrained weights on a deployed path (shared by every task in PST).
    """
    net = model.net
    used = [net.path_prefixes(s) for s in stitch_ids]
    task = frozen = 0
    for n, p in net.named_parameters():
        if not any(on_path(n, prefixes) for prefixes in used):
            continue
        if p.requires_grad or n.startswith("stitch_layers."):
            task += p.numel()
        else:
            frozen += p.numel()
    task += sum(p.numel() for s in stitch_ids for p in model.biases_for(s).values())
    return dict(task=int(task), total=int(task + frozen))


def summarize_cosines(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, median and share of negative cosines per group (no NaN: empty groups are absent)."""
    g = df.groupby(by)["cosine"]
    out = g.agg(pairs="size", mean="mean", median="median").reset_index()
    out["negative_share"] = g.apply(lambda c: float((c < 0).mean())).to_numpy()
    return out


def selection_ablation(stitches: pd.DataFrame, deployments: dict[str, pd.DataFrame], test: pd.DataFrame,
                       k: int) -> pd.DataFrame:
    """One trained ESTA model, several deployments (spec §9, `selection` ablation): those given in
    ``deployments`` (one per score, ``esta.scores``) and the oracle's (best test accuracy per
    interval: the ceiling of any selector). Returns them as tidy deployed rows (``selection``,
    stitch_id, interval, reason, test_accuracy + the stitch table's columns)."""
    from esta.pareto import select_deployed

    test_acc = test.set_index("stitch_id")["test_accuracy"]
    oracle = select_deployed(stitches, stitches["stitch_id"].map(test_acc).to_numpy(), k)
    out = []
    for name, d in dict(deployments, oracle=oracle).items():
        d = d[["stitch_id", "interval", "reason"]].merge(stitches, on="stitch_id")
        out.append(d.assign(selection=name, test_accuracy=d["stitch_id"].map(test_acc).to_numpy()))
    return pd.concat(out, ignore_index=True)


def visit_counts(history: pd.DataFrame, n_stitches: int) -> pd.Series:
    """Training steps spent on each stitch 0..n_stitches-1, from a run's per-step history."""
    return history["stitch_id"].value_counts().reindex(range(n_stitches), fill_value=0).rename("visits")


def visit_table(runs: pd.DataFrame, stitches: pd.DataFrame) -> pd.DataFrame:
    """Per method and stitch: visits over runs (mean, min), how many runs deployed it, and the
    fewest visits it had in a run that deployed it (NaN if never deployed).

    ``runs`` has one row per (method, task, seed, stitch_id) with ``visits`` and ``deployed`` (bool);
    ``stitches`` gives ``stitch_id, gmacs, front, end``."""
    g = runs.groupby(["method", "stitch_id"])
    out = g.agg(visits=("visits", "mean"), visits_min=("visits", "min"), runs=("visits", "size"),
                deployed_runs=("deployed", "sum")).reset_index()
    dep = runs[runs["deployed"]].groupby(["method", "stitch_id"])["visits"].min().rename("deployed_visits_min")
    out = out.join(dep, on=["method", "stitch_id"])
    cost = stitches[["stitch_id", "gmacs"]].assign(anchor=stitches["front"] == stitches["end"])
    return out.merge(cost, on="stitch_id").sort_values(["method", "gmacs"]).reset_index(drop=True)
