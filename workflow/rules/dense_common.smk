# Dense prediction (spec §14): its config slice, task ids, code inputs and input functions. A dense task
# is task `dense/<name>` of the classification rules (data, ls_init, train_esta, snnet_*, select_esta,
# evaluate_stitches, palette*), each script dispatching on esta.vit.tasks.task_kind; rules/dense.smk
# keeps only the dense tables and figures.

from esta.vit.tasks import dense_task, task_kind

DENSE = config["dense"]
# dense.tasks as task ids; never in config `tasks` (pareto_all, accuracy_by_group are classification's)
DENSE_TASKS = [f"dense/{t}" for t in DENSE["tasks"]]
# the suites of the task wildcard: dense/<name> only when dense.enabled (off, no rule makes a dense file)
SUITES = "embedded|vtab|fgvc|custom" + ("|dense" if DENSE["enabled"] else "")
DENSE_CODE = code(
    "vit/seg_jobs",
    "vit/seg",
    "vit/seg_results",
    "vit/seg_data",
    "vit/stitch",
    "vit/tuning",
    "vit/anchors",
    "train",
    "sampling",
    "analysis",
    "vit/build",
    "vit/evaluate",
    "pareto",
    "scores",
)
for _t in DENSE["tasks"]:
    dense_task(_t)  # an unknown dense task fails before any job, listing the known ones


def dense_render_folder(w):
    """The rendered folder of the embedded dense task; none for one under data_root."""
    return (
        []
        if dense_task(w.task[len("dense/") :])["folder"]
        else f"{R}/data/{w.task}/scenes"
    )


def per_kind(cls, seg):
    """A param or input function: `cls` for a classification task, `seg` for a dense one; each a
    value or a function of the wildcards. With dense.enabled off, `cls` itself: the classification
    rules plan as without dense tasks (no function per job for the DAG build, issue 32).
    """
    if not DENSE["enabled"]:
        return cls

    def pick(w):
        value = seg if task_kind(w.task) == "seg" else cls
        return value(w) if callable(value) else value

    return pick


# the dense slice as a param: the scripts' dense branch reads it (None for a classification task)
dense_slice = per_kind(None, DENSE)


def dense_targets():
    tasks = DENSE["tasks"]
    out = [f"{R}/tables/pareto_dense.csv", f"{R}/tables/dense_summary.csv"]
    out += expand(f"{R}/figures/pareto_dense.{{ext}}", ext=["pdf", "png"])
    out += expand(f"{R}/tables/all_stitches_dense_{{t}}.csv", t=tasks)
    out += expand(
        f"{R}/figures/all_stitches_dense_{{t}}.{{ext}}", t=tasks, ext=["pdf", "png"]
    )
    # what a user deploys: one segmentation palette per run (rules/palette.smk)
    out += expand(
        f"{R}/{{method}}/default/{{task}}/palette/seed{{seed}}",
        method=METHODS,
        task=DENSE_TASKS,
        seed=DENSE["seeds"],
    )
    return out


def dense_runs(name):
    """`name` of every dense run: results/<method>/default/dense/<name>/seed<s>/tuning/<name>."""
    return expand(
        f"{R}/{{method}}/default/{{t}}/seed{{seed}}/tuning/{name}",
        method=METHODS,
        t=DENSE_TASKS,
        seed=DENSE["seeds"],
    )


def dense_adapt_infos():
    """Each anchor fine-tuned alone per dense task and seed (SN-Net's adapt step, the anchors-alone rows)."""
    return expand(
        f"{R}/snnet/default/{{t}}/seed{{seed}}/tuning/adapt/anchor{{i}}.json",
        t=DENSE_TASKS,
        seed=DENSE["seeds"],
        i=ANCHORS,
    )


def dense_cost_inputs():
    """cost_table's inputs for the dense rows: the benchmarks of the dense runs' training, evaluation
    and deployment jobs, each run's train.json and deployed stitches, the adapt JSONs and the manifests
    (none when off; esta.vit.seg_tables.DENSE_STEPS sums them per step).
    """
    if not DENSE["enabled"]:
        return {}
    B, run = f"{R}/benchmarks", "default/{t}/seed{seed}"
    kw = dict(t=DENSE_TASKS, seed=DENSE["seeds"])
    bench = expand(f"{B}/snnet_adapt/{run}/tuning/anchor{{i}}.tsv", i=ANCHORS, **kw)
    bench += expand(f"{B}/ls_init/{{method}}/{run}/tuning.tsv", method=METHODS, **kw)
    bench += expand(
        f"{B}/{{job}}/{run}/tuning.tsv", job=["train_esta", "snnet_stitch"], **kw
    )
    bench += expand(
        f"{B}/evaluate_stitches/{{method}}/{run}/{{split}}.tsv",
        method=METHODS,
        split=["selection", "test"],
        **kw,
    )
    bench += expand(f"{B}/{{job}}/{run}.tsv", job=["select_esta", "snnet_deploy"], **kw)
    return dict(
        dense_bench=bench,
        dense_info=dense_runs("train.json"),
        dense_adapt=dense_adapt_infos(),
        dense_deployed=dense_runs("deployed.csv"),
        dense_data=expand(f"{R}/data/{{t}}/manifest.json", t=DENSE_TASKS),
    )
