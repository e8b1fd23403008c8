import copy
import math
import os
import re

validate(config, schema="../schemas/config.schema.yaml")

R = "results"
METHODS = ["esta", "snnet"]
ANCHORS = list(
    range({"embedded": 3, "vit-ti-s-b": 3, "deit-ti-s-b": 3}.get(config["family"], 3))
)


CPUS = os.cpu_count() or 1


def heavy_threads():
    """Threads a heavy job declares. Each job runs `config["threads"]` torch threads; when --cores
    exceeds the machine's CPUs the declared number is scaled up by the same factor, so Snakemake
    never runs more torch threads side by side than there are CPUs (no oversubscription).
    """
    cores = workflow.resource_settings.cores
    if workflow.non_local_exec or not isinstance(cores, int):
        return config["threads"]
    return config["threads"] * max(1, math.ceil(cores / CPUS))


def code(*modules):
    """The esta modules a job runs, as inputs: changed code reruns its jobs."""
    return [f"esta/{m}.py" for m in ("__init__", "runtime") + modules]


def merged(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            merged(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict)
            else v
        )
    return out


def method_config(variant):
    """`esta`, `snnet` and `deploy` with the variant's overrides merged in."""
    if variant not in config["variants"]:
        raise ValueError(
            f"unknown variant {variant!r}; config variants: {sorted(config['variants'])}"
        )
    base = {k: config[k] for k in ("esta", "snnet", "deploy")}
    return merged(base, config["variants"][variant])


def slug(task):
    """Task id as a file-name part: vtab/dtd -> vtab-dtd."""
    return re.sub(r"[^\w]", "-", task)


def anchor_files(wildcards):
    """Pretrained anchors (ESTA, SN-Net adapt) of the configured family."""
    return expand(f"{R}/anchors/{config['family']}/anchor{{i}}.safetensors", i=ANCHORS)


def run_dir(w):
    return f"{R}/{w.method}/{w.variant}/{w.task}/seed{w.seed}"


def eval_mode():
    return "final" if config["retrain_final"] else "tuning"


def get_final_output():
    out = [
        f"{R}/config.resolved.yaml",
        f"{R}/tables/stitches.csv",
        f"{R}/tables/anchors.csv",
        f"{R}/tables/pareto_all.csv",
        f"{R}/tables/benchmarks.csv",
        f"{R}/figures/pareto_all.pdf",
        f"{R}/figures/pareto_all.png",
    ]
    out += expand(
        f"{R}/figures/pareto_{{slug}}.pdf", slug=[slug(t) for t in config["tasks"]]
    )
    out += expand(
        f"{R}/{{method}}/default/{{task}}/deployed/seed{{seed}}",
        method=METHODS,
        task=config["tasks"],
        seed=config["seeds"],
    )
    return out


def ls_init_anchors(w):
    if w.method == "esta":
        return anchor_files(w)
    return expand(f"{run_dir(w)}/{w.mode}/adapt/anchor{{i}}.safetensors", i=ANCHORS)


def model_inputs(w):
    """Anchors, stitching layers and trained state of the model reported on the test split."""
    d = f"{run_dir(w)}/{eval_mode()}"
    if w.method == "esta":
        anchors = anchor_files(w)
    else:
        anchors = expand(f"{d}/adapt/anchor{{i}}.safetensors", i=ANCHORS)
    return dict(
        anchors=anchors,
        stitch=f"{d}/stitch_init.safetensors",
        model=f"{d}/model.safetensors",
    )


def benchmark_files(variants=("default",)):
    """The benchmark file of every heavy job behind the default figures."""
    B = f"{R}/benchmarks"
    modes = sorted({"tuning", eval_mode()})
    run = "{variant}/{task}/seed{seed}"
    kw = dict(variant=variants, task=config["tasks"], seed=config["seeds"])
    files = expand(f"{B}/pretrain_anchor/{config['family']}/anchor{{i}}.tsv", i=ANCHORS)
    files += expand(
        f"{B}/ls_init/{{method}}/{run}/{{mode}}.tsv", method=METHODS, mode=modes, **kw
    )
    files += expand(f"{B}/train_esta/{run}/{{mode}}.tsv", mode=modes, **kw)
    files += expand(
        f"{B}/snnet_adapt/{run}/{{mode}}/anchor{{i}}.tsv", mode=modes, i=ANCHORS, **kw
    )
    files += expand(f"{B}/snnet_stitch/{run}/{{mode}}.tsv", mode=modes, **kw)
    files += expand(
        f"{B}/{{step}}/{run}.tsv", step=["select_esta", "snnet_deploy"], **kw
    )
    files += expand(
        f"{B}/{{step}}/{{method}}/{run}.tsv",
        step=["evaluate_deployed", "export_deployed"],
        method=METHODS,
        **kw,
    )
    return files
