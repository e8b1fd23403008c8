# Dense prediction (rules/dense.smk): its config slice, code inputs and input functions.

from esta.vit.tasks import dense_task

DENSE = config["dense"]
DENSE_CODE = code(
    "vit/seg",
    "vit/seg_results",
    "vit/seg_data",
    "vit/stitch",
    "vit/tuning",
    "vit/anchors",
    "train",
    "sampling",
    "vit/build",
    "vit/evaluate",
    "pareto",
    "scores",
)
for _t in DENSE["tasks"]:
    dense_task(_t)  # an unknown dense task fails before any job, listing the known ones


def dense_targets():
    tasks = DENSE["tasks"]
    out = [f"{R}/tables/pareto_dense.csv", f"{R}/tables/dense_summary.csv"]
    out += expand(f"{R}/figures/pareto_dense.{{ext}}", ext=["pdf", "png"])
    out += expand(f"{R}/tables/all_stitches_dense_{{t}}.csv", t=tasks)
    out += expand(
        f"{R}/figures/all_stitches_dense_{{t}}.{{ext}}", t=tasks, ext=["pdf", "png"]
    )
    # what a user deploys: one segmentation palette per run (rules/palette.smk)
    out += dense_runs("palette")
    return out


def dense_anchors(w):
    """The anchors a dense method stitches: ESTA the upstream ones, SN-Net its adapted ones."""
    if w.method == "esta":
        return anchor_files(w)
    return expand(
        f"{R}/dense/snnet/{w.dtask}/seed{w.seed}/adapt/anchor{{i}}.safetensors",
        i=ANCHORS,
    )


def dense_runs(name):
    return expand(
        f"{R}/dense/{{method}}/{{t}}/seed{{seed}}/{name}",
        method=METHODS,
        t=DENSE["tasks"],
        seed=DENSE["seeds"],
    )


def dense_adapt_infos():
    """Each anchor fine-tuned alone per dense task and seed (SN-Net's adapt step, the anchors-alone rows)."""
    return expand(
        f"{R}/dense/snnet/{{t}}/seed{{seed}}/adapt/anchor{{i}}.json",
        t=DENSE["tasks"],
        seed=DENSE["seeds"],
        i=ANCHORS,
    )


def dense_cost_inputs():
    """cost_table's inputs for the dense rows: the benchmarks of the dense training and evaluation
    jobs, each run's train.json and deployed stitches, the adapt JSONs and the manifests (none when off).
    """
    if not DENSE["enabled"]:
        return {}
    runs = dict(method=METHODS, t=DENSE["tasks"], seed=DENSE["seeds"])
    bench = expand(
        f"{R}/benchmarks/dense_adapt/{{t}}/seed{{seed}}/anchor{{i}}.tsv",
        t=DENSE["tasks"],
        seed=DENSE["seeds"],
        i=ANCHORS,
    )
    for job in ("dense_ls_init", "dense_train", "dense_evaluate"):
        bench += expand(
            f"{R}/benchmarks/{job}/{{method}}/{{t}}/seed{{seed}}.tsv", **runs
        )
    return dict(
        dense_bench=bench,
        dense_info=dense_runs("train.json"),
        dense_adapt=dense_adapt_infos(),
        dense_deployed=dense_runs("deployed.csv"),
        dense_data=expand(f"{R}/dense/data/{{t}}/manifest.json", t=DENSE["tasks"]),
    )
