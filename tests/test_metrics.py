"""Per-task metrics of deployed stitches: costs with the head of each task, and the run behind
each reported number (esta.vit.metrics; spec §3, §8)."""

from __future__ import annotations

import pandas as pd
import pytest

from esta.vit.info import stitch_table
from esta.vit.anchors import meta_family
from esta.vit.metrics import deployed_metrics, head_split, with_task_head

FAMILY = "embedded"


@pytest.fixture(scope="module")
def stitches():
    return head_split(FAMILY, 10)  # what rule stitch_table writes when tasks[0] has 10 classes


def run(mode, wall_s, trainable=1234, steps=400, **extra):
    return dict(mode=mode, wall_s=wall_s, trainable_params=trainable, steps=steps, provenance=dict(torch="2.x"),
                **extra)


def deployed(stitches):
    ids = [0, 1, 2, 5, 20]
    return pd.DataFrame(dict(stitch_id=ids, interval=range(5), reason="interval", test_accuracy=0.5))


def test_each_task_counts_its_own_head(stitches):
    """Same stitches, a 555-class and a 10-class task: params differ by exactly the head difference
    (end anchor width + 1 per class), MACs by the width per class; the counts equal a stitch table
    counted with that task's head."""
    widths = [a.embed_dim for a in meta_family(FAMILY, 1)]
    acc = deployed(stitches)
    tuning = run("tuning", 10.0)
    big = deployed_metrics(acc, stitches, 555, tuning, tuning, retrain_final=False).set_index("stitch_id")
    small = deployed_metrics(acc, stitches, 10, tuning, tuning, retrain_final=False).set_index("stitch_id")
    end = stitches.set_index("stitch_id").loc[big.index, "end"]
    head_params = end.map(lambda e: (widths[e] + 1) * (555 - 10))
    assert (big["params"] - small["params"] == head_params).all()
    assert (head_params > 0).all()
    head_gmacs = end.map(lambda e: widths[e] * (555 - 10) / 1e9)
    assert (big["gmacs"] - small["gmacs"]).to_numpy() == pytest.approx(head_gmacs.to_numpy(), rel=1e-9)
    counted = stitch_table(FAMILY, 555).set_index("stitch_id").loc[big.index]
    assert (big["params"] == counted["params"]).all()
    assert (big["gmacs"] == counted["gmacs"]).all()


def test_with_task_head_of_the_table_s_own_classes_is_the_table(stitches):
    same = with_task_head(stitches, 10)
    for col in ("macs", "gmacs", "params"):
        assert (same[col] == stitches[col]).all(), col
    with pytest.raises(ValueError, match="params_nohead"):
        with_task_head(stitches.drop(columns="params_nohead"), 10)


def test_final_mode_accuracy_reports_the_final_run(stitches):
    acc = deployed(stitches)
    tuning, final = run("tuning", 10.0, 1234), run("final", 25.0, 1234, steps=500)
    out = deployed_metrics(acc, stitches, 10, tuning, final, retrain_final=True)
    assert (out["train_wall_s"] == 25.0).all() and (out["accuracy_mode"] == "final").all()
    assert (out["train_steps"] == 500).all() and (out["adapt_steps"] == 0).all()
    assert (out["selection_train_wall_s"] == 10.0).all()
    assert out["retrain_final"].all()
    off = deployed_metrics(acc, stitches, 10, tuning, tuning, retrain_final=False)
    assert (off["train_wall_s"] == 10.0).all() and (off["accuracy_mode"] == "tuning").all()
    # the tuning run passed as the run behind final-mode accuracy is refused, naming it
    with pytest.raises(ValueError, match="eval_run"):
        deployed_metrics(acc, stitches, 10, tuning, tuning, retrain_final=True)


def test_three_stage_run_reports_its_first_stage(stitches):
    """A three-stage ESTA run's train.json carries stage 1 (the anchors adapted alone); the table
    keeps it apart, so that train + adapt is the whole training."""
    three = run("tuning", 30.0, steps=400, stages="three", adapt_steps=1200, adapt_wall_s=90.0, peak_rss_mb=900.0)
    out = deployed_metrics(deployed(stitches), stitches, 10, three, three, retrain_final=False)
    assert (out["stages"] == "three").all()
    assert (out["adapt_steps"] == 1200).all() and (out["adapt_wall_s"] == 90.0).all()
    assert (out["train_steps"] == 400).all() and (out["train_peak_rss_mb"] == 900.0).all()


def test_benchmarks_take_the_peak_memory_each_job_logged(tmp_path):
    """Snakemake samples a job's memory every 0.5-30 s and writes NA (or a wrapper's few MB) for a
    short job; the job's own exit line (the kernel's high-water mark) is exact, and the sample stands
    in without it."""
    import subprocess
    import sys

    from esta import runtime

    log = tmp_path / "logs" / "select_esta" / "default" / "digits" / "seed0.log"
    log.parent.mkdir(parents=True)
    job = (f"from esta import runtime; runtime.start({str(log)!r}, 1); runtime.start({str(log)!r}, 1); "
           "block = bytearray(300 * 2**20); block[::4096] = b'x' * len(block[::4096])")
    subprocess.run([sys.executable, "-c", job], check=True)
    usage = [line for line in log.read_text().splitlines() if runtime.USAGE in line]
    assert len(usage) == 1  # started twice, logged once
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = []
    for job_path, max_rss in (("select_esta/default/digits/seed0", "NA"), ("train_esta/r0.5/digits/seed0/tuning", "812.5")):
        f = tmp_path / "benchmarks" / f"{job_path}.tsv"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(header + f"0.41\t0:00:00\t{max_rss}\tNA\tNA\tNA\tNA\tNA\tNA\tNA\n")
        files.append(f)
    bench = runtime.read_benchmarks(files).set_index("rule")
    assert 300 < bench.loc["select_esta", "peak_rss_mb"] < 1000 and pd.isna(bench.loc["select_esta", "max_rss"])
    assert bench.loc["train_esta", "job"] == "r0.5/digits/seed0/tuning"  # a dot in a wildcard is no suffix
    assert bench.loc["train_esta", "peak_rss_mb"] == 812.5  # no log: the sample stands in
