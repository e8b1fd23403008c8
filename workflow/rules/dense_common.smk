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
