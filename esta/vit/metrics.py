"""Per-task tables of deployed stitches (spec §3, §8, §9).

The family's stitch table is task-independent except for the classification head: a stitch's MACs and
parameters end in the head of *its* task. ``head_split`` writes the head-free costs and the head's cost
per class once per family; ``with_task_head`` adds back the head of a task of C classes (the head is
linear in C: ``width`` MACs and ``width + 1`` parameters per class). ``deployed_metrics`` joins one
seed's deployed stitches with those costs and with the metadata of the training run that produced
the reported accuracy: with ``retrain_final`` that is the final-mode run, not the tuning run that
chose the stitches. ``anchors_alone`` puts the reference runs (each anchor fully fine-tuned alone,
from its pretrained weights or from scratch) in the same tidy form.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["head_split", "with_task_head", "deployed_metrics", "anchors_alone"]


def head_split(family_name: str, head_classes: int) -> pd.DataFrame:
    """The stitch table of ``esta.vit.info.stitch_table`` with ``head_classes`` classes, plus the
    head-free ``params_nohead`` (``macs_nohead`` is already there) and the head's cost per class,
    ``head_params_per_class`` and ``head_macs_per_class``, measured by counting a second table with
    one class more (so any head linear in the class count is split exactly)."""
    from esta.vit.info import stitch_table  # builds models on the meta device: torch and timm, here only

    t = stitch_table(family_name, head_classes)
    more = stitch_table(family_name, head_classes + 1).set_index("stitch_id").loc[t["stitch_id"]]
    per_param = more["params"].to_numpy() - t["params"].to_numpy()
    per_mac = more["macs"].to_numpy() - t["macs"].to_numpy()
    if ((t["macs"] - t["macs_nohead"]).to_numpy() != head_classes * per_mac).any():
        raise ValueError(f"family {family_name!r}: head MACs are not linear in the class count")
    return t.assign(
        head_classes=head_classes,
        params_nohead=t["params"] - head_classes * per_param,
        head_params_per_class=per_param,
        head_macs_per_class=per_mac,
    )


def with_task_head(stitches: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """``stitches`` (a ``head_split`` table) with ``macs``, ``gmacs`` and ``params`` of a
    ``num_classes`` head."""
    missing = {"macs_nohead", "params_nohead", "head_params_per_class", "head_macs_per_class"} - set(stitches)
    if missing:
        raise ValueError(f"stitch table lacks the head-free columns {sorted(missing)} (rerun rule stitch_table)")
    out = stitches.assign(
        head_classes=num_classes,
        macs=stitches["macs_nohead"] + num_classes * stitches["head_macs_per_class"],
        params=stitches["params_nohead"] + num_classes * stitches["head_params_per_class"],
    )
    return out.assign(gmacs=out["macs"] / 1e9)


def deployed_metrics(
    accuracy: pd.DataFrame,
    stitches: pd.DataFrame,
    num_classes: int,
    tuning_run: dict,
    eval_run: dict,
    retrain_final: bool,
) -> pd.DataFrame:
    """One seed's deployed stitches (``accuracy``: stitch_id, interval, reason, test_accuracy, ...)
    with name, position, depth, gmacs and params of the task's head, and the runs behind them.

    ``tuning_run`` and ``eval_run`` are the ``train.json`` of the tuning-mode run (which chose the
    stitches) and of the run whose model gave ``test_accuracy`` (final mode with ``retrain_final``,
    else the same tuning run). ``trainable_params``, ``train_wall_s``, ``train_peak_rss_mb`` and
    ``torch`` describe the eval run; ``selection_train_wall_s`` is the tuning run's time. A
    three-stage ESTA run adds its stage 1 (anchors adapted alone) in ``adapt_wall_s`` /
    ``adapt_steps`` (0 otherwise), so ``train_wall_s + adapt_wall_s`` is its whole training time.
    """
    want = "final" if retrain_final else "tuning"
    for run, mode, name in ((tuning_run, "tuning", "tuning_run"), (eval_run, want, "eval_run")):
        if run.get("mode") != mode:
            raise ValueError(f"{name} is a {run.get('mode')!r}-mode train.json, expected {mode!r} "
                             f"(retrain_final={retrain_final})")
    cols = ["name", "front", "end", "j", "k", "depth", "gmacs", "macs_unit", "params"]
    costs = with_task_head(stitches, num_classes).set_index("stitch_id")[cols]
    return accuracy.join(costs, on="stitch_id").assign(
        trainable_params=eval_run["trainable_params"],
        train_wall_s=eval_run["wall_s"],
        train_steps=eval_run["steps"],
        train_peak_rss_mb=eval_run.get("peak_rss_mb"),
        stages=eval_run.get("stages"),
        adapt_wall_s=eval_run.get("adapt_wall_s", 0.0),
        adapt_steps=eval_run.get("adapt_steps", 0),
        accuracy_mode=eval_run["mode"],
        selection_train_wall_s=tuning_run["wall_s"],
        retrain_final=retrain_final,
        torch=eval_run["provenance"]["torch"],
    )


CONTROLS = {"pretrained": "anchor_ft", "scratch": "scratch"}  # init of an anchor trained alone -> method


def anchors_alone(runs: list[tuple[int, dict]], stitches: pd.DataFrame, task_classes: dict[str, int],
                  task_groups: dict[str, str]) -> pd.DataFrame:
    """Rows in the form of the deployed-stitch tables for anchors trained alone on a task.

    ``runs`` pairs an anchor index with the ``adapt/anchor<i>.json`` its training wrote (SN-Net's
    `adapt` step, init "pretrained", or the from-scratch control, init "scratch"). The method is
    ``anchor_ft`` or ``scratch``; each row is the anchor's own stitch with its task's head cost,
    its test accuracy and, as trainable parameters, all of the anchor's."""
    rows = []
    for i, run in runs:
        if run.get("test_accuracy") is None:
            raise ValueError(f"anchor {i} run on {run.get('task')} has no test accuracy (evaluate_test off?)")
        rows.append(dict(method=CONTROLS[run["init"]], variant="default", task=run["task"],
                         group=task_groups[run["task"]], seed=run["seed"], stitch_id=i, interval=-1 - i,
                         reason="anchor", test_accuracy=run["test_accuracy"], trainable_params=run["params"],
                         train_wall_s=run["wall_s"], steps=run["steps"]))
    out = pd.DataFrame(rows)
    parts = []
    for task, g in out.groupby("task", sort=False):
        costs = with_task_head(stitches, task_classes[task]).set_index("stitch_id")
        parts.append(g.join(costs[["name", "front", "end", "gmacs", "macs_unit", "params"]], on="stitch_id"))
    return pd.concat(parts, ignore_index=True)
