import copy
import math
import os
import re

from esta.modules import stamp
from esta.schema import check_config

# jsonschema directly, not snakemake.utils.validate: a failure names the key, value and rule on
# one line instead of printing the whole schema around it.
SCHEMA = os.path.join(workflow.basedir, "schemas", "config.schema.yaml")
# `--config seeds=[0,1,2]` reaches the config as a list of strings: read digit strings as seeds
if isinstance(config.get("seeds"), list):
    config["seeds"] = [
        int(x) if isinstance(x, str) and x.strip().isdigit() else x
        for x in config["seeds"]
    ]
check_config(config, SCHEMA)

# The anchor count comes from the family table; this imports torch and timm (seconds of DAG build).
from esta.vit.anchors import family
from esta.vit.tasks import check_custom_tasks, custom_name, is_custom, task_group
from esta.vit.timm_family import config_family

# the family the vision rules build: a FAMILIES name, or (family: timm) the rows of anchors.timm,
# refused here, before any job, when they cannot be stitched (spec §13)
FAMILY = config_family(
    config["family"], config["anchors"]["timm"], config["data"]["img_size"]
)
check_custom_tasks(config["tasks"], config["datasets"])

R = "results"
# anchors shipped inside the package (anchors.source: shipped), and the command that makes them
SHIPPED = "esta/vit/assets"
SHIP_COMMAND = "snakemake ship_anchors --configfile config/upstream.yaml --cores 2"
METHODS = ["esta", "snnet"]
ANCHORS = list(range(len(family(FAMILY))))
# the from-scratch control (controls.scratch): the largest anchor (families are small to large)
# or every one
SCRATCH_ANCHORS = (
    ANCHORS[-1:] if config["controls"]["scratch"] == "largest" else ANCHORS
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
    """The esta modules a job runs, as an input: changed code reruns its jobs. A name is a module
    (`train`, `vit/stitch`) or a package folder (`vit/data`, every module in it); every esta module
    they import, at any depth, counts too (esta.modules.closure reads the imports). The input is one
    stamp file under results/.code listing those files with their sha256, as new as the newest of
    them (esta.modules.stamp): one input per job instead of ~30, for the DAG build's sake (issue 32).
    """
    return [stamp(["__init__", "runtime", *modules], f"{R}/.code")]


def merged(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            merged(out[k], v)
            if isinstance(v, dict) and isinstance(out.get(k), dict)
            else v
        )
    return out


# A variant must make a valid config too: a typo in an override would otherwise be ignored silently.
for _name, _over in config["variants"].items():
    check_config(
        merged(config, _over),
        SCHEMA,
        f"config with variants.{_name} ({_over}) merged in",
    )


# variant -> its merged config: params and input functions ask for it once per job (8,000 times in a
# dry run of config/paper.yaml), and a deep copy each time was ~1/6 of the DAG build's CPU (issue 32)
_METHOD_CONFIGS = {}


def method_config(variant):
    """`esta`, `snnet` and `deploy` with the variant's overrides merged in. Built once per variant and
    shared by every caller: read it, never modify it."""
    if variant not in _METHOD_CONFIGS:
        _METHOD_CONFIGS[variant] = _method_config(variant)
    return _METHOD_CONFIGS[variant]


def _method_config(variant):
    if variant not in config["variants"]:
        raise ValueError(
            f"unknown variant {variant!r}; config variants: {sorted(config['variants'])}"
        )
    base = {k: config[k] for k in ("esta", "snnet", "deploy")}
    return merged(base, config["variants"][variant])


def model_config(variant):
    """`esta` and `snnet` of a variant: what builds its models, without `deploy` (evaluating every
    stitch does not depend on which ones are deployed)."""
    return {k: v for k, v in method_config(variant).items() if k != "deploy"}


def slug(task):
    """Task id as a file-name part: vtab/dtd -> vtab-dtd."""
    return re.sub(r"[^\w]", "-", task)


def task_of(name):
    """The configured task whose slug is `name`."""
    tasks = {slug(t): t for t in config["tasks"]}
    if name not in tasks:
        raise ValueError(
            f"no configured task has the file name {name!r}; tasks: {config['tasks']}"
        )
    return tasks[name]


def dataset_entry(task):
    """The config `datasets` entry of a custom task (spec §13); None for a task of the table."""
    return config["datasets"][custom_name(task)] if is_custom(task) else None


EXTERNAL = [t for t in config["tasks"] if not t.startswith("embedded/")]
if (
    config["anchors"]["source"] in ("pretrain", "shipped")
    and config["family"] != "embedded"
):
    raise ValueError(
        f"anchors.source {config['anchors']['source']!r} exists only for the embedded family, "
        f"not {config['family']!r}; "
        "use anchors.source: files with weights_root and anchors.weights"
    )
if config["anchors"]["source"] == "files" and len(
    config["anchors"]["weights"] or ANCHORS
) != len(ANCHORS):
    raise ValueError(
        f"anchors.weights lists {len(config['anchors']['weights'])} files; "
        f"family {config['family']!r} has {len(ANCHORS)} anchors"
    )


ABL = config["ablations"]
ABLATIONS = ["bias", "sampling", "selection", "rank", "peft", "stages"]
for _name in ("bias", "sampling", "rank", "peft", "stages"):
    for _v in ABL[_name]:
        if _v not in config["variants"]:
            raise ValueError(
                f"ablations.{_name} names variant {_v!r}, which is not in variants "
                f"({sorted(config['variants'])})"
            )
for _t in ABL["tasks"]:
    if _t not in config["tasks"]:
        raise ValueError(f"ablations.tasks lists {_t!r}, which is not in tasks")


def ablation_variants(name):
    """Variants an ablation compares; `selection` compares two deployments of the default model."""
    return ["default"] if name == "selection" else ABL[name]


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
    slugs = [slug(t) for t in config["tasks"]]
    out += expand(
        f"{R}/figures/pareto_{{slug}}.{{ext}}", slug=slugs, ext=["pdf", "png"]
    )
    out += expand(f"{R}/tables/pareto_{{slug}}.csv", slug=slugs)
    out += expand(f"{R}/tables/all_stitches_{{slug}}.csv", slug=slugs)
    out += expand(
        f"{R}/figures/all_stitches_{{slug}}.{{ext}}", slug=slugs, ext=["pdf", "png"]
    )
    out += expand(
        f"{R}/tables/{{name}}.csv",
        name=[
            "accuracy_by_task",
            "accuracy_by_group",
            "cost",
            "anchors_alone",
            "selection_scores",
        ],
    )
    figures = [f"ablation_{a}" for a in ABLATIONS]
    figures += ["importance_vs_accuracy", "grad_interference", "visits"]
    out += expand(f"{R}/figures/{{fig}}.{{ext}}", fig=figures, ext=["pdf", "png"])
    out += expand(f"{R}/tables/{{fig}}.csv", fig=figures)
    out += expand(
        f"{R}/{{method}}/default/{{task}}/deployed/seed{{seed}}",
        method=METHODS,
        task=config["tasks"],
        seed=config["seeds"],
    )
    # what a user deploys (rules/palette.smk): one palette per run, latency and storage tables
    out += expand(
        f"{R}/{{method}}/default/{{task}}/palette/seed{{seed}}",
        method=METHODS,
        task=config["tasks"],
        seed=config["seeds"],
    )
    out += [f"{R}/tables/latency.csv", f"{R}/tables/storage.csv"]
    if config["llm"]["enabled"]:  # Stitched LLaMA (rules/llm.smk)
        out += llm_targets()
    if config["dense"]["enabled"]:  # dense prediction (rules/dense.smk)
        out += dense_targets()
    return out
