import copy
import math
import os
import re

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

R = "results"
# anchors shipped inside the package (anchors.source: shipped), and the command that makes them
SHIPPED = "esta/vit/assets"
SHIP_COMMAND = "snakemake ship_anchors --configfile config/upstream.yaml --cores 2"
METHODS = ["esta", "snnet"]
ANCHORS = list(range(len(family(config["family"]))))
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
    """The esta modules a job runs, as inputs: changed code reruns its jobs. A name is a module
    (`train`, `vit/stitch`) or a package folder (`vit/data`), whose every module counts.
    """
    out = []
    for m in ("__init__", "runtime") + modules:
        if os.path.isdir(f"esta/{m}"):
            out += sorted(
                f"esta/{m}/{f}" for f in os.listdir(f"esta/{m}") if f.endswith(".py")
            )
        else:
            out.append(f"esta/{m}.py")
    return out


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


def ablation_inputs(w):
    """Per-task metrics of each compared variant; for `selection`, the default ESTA model's
    importance deployment and its accuracy on the selection and test splits."""
    if w.name != "selection":
        return dict(
            metrics=expand(
                f"{R}/esta/{{variant}}/{{task}}/metrics.csv",
                variant=ABL[w.name],
                task=ABL["tasks"],
            )
        )
    run = f"{R}/esta/default/{{task}}/seed{{seed}}/tuning"
    kw = dict(task=ABL["tasks"], seed=config["seeds"])
    return dict(
        trained=expand(f"{run}/deployed_trained.csv", **kw),
        refreshed=expand(f"{run}/deployed_refreshed.csv", **kw),
        selection=expand(f"{run}/stitch_accuracy_selection.csv", **kw),
        test=expand(f"{run}/stitch_accuracy_test.csv", **kw),
        stitches=f"{R}/tables/stitches.csv",
        train=expand(f"{run}/train.json", **kw),
    )


def stat_files(folder, depth=2):
    """(name, bytes, mtime) of the non-image files under `folder`, up to `depth` levels: a cheap
    fingerprint of a data set's list files, taken when the DAG is built."""
    if not os.path.isdir(folder):
        return f"missing: {folder}"
    out = []
    for here, dirs, files in os.walk(folder):
        rel = os.path.relpath(here, folder)
        if rel.count(os.sep) + 1 >= depth:
            dirs.clear()
        for f in sorted(files):
            if not f.lower().endswith((".jpg", ".jpeg", ".png")):
                st = os.stat(os.path.join(here, f))
                out.append((os.path.join(rel, f), st.st_size, int(st.st_mtime)))
    return sorted(out)


def data_fingerprint(w):
    """Changed list files of an external task change this param, which reruns register_data."""
    if config["data_root"] is None:
        return "data_root unset"
    from esta.vit.data import (
        task_info,
    )  # imported only for external tasks (torch import cost)

    return stat_files(os.path.join(config["data_root"], task_info(w.task).folder))


def weights_file(w):
    files = config["anchors"]["weights"]
    return None if files is None else files[int(w.i)]


def weights_fingerprint(w):
    """A changed weight file changes this param, which reruns register_weights."""
    if config["weights_root"] is None or weights_file(w) is None:
        return "weights unset"
    path = os.path.join(config["weights_root"], weights_file(w))
    if not os.path.isfile(path):
        return f"missing: {path}"
    st = os.stat(path)
    return [st.st_size, int(st.st_mtime)]


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
    slugs = [slug(t) for t in config["tasks"]]
    out += expand(
        f"{R}/figures/pareto_{{slug}}.{{ext}}", slug=slugs, ext=["pdf", "png"]
    )
    out += expand(f"{R}/tables/pareto_{{slug}}.csv", slug=slugs)
    out += expand(
        f"{R}/tables/{{name}}.csv",
        name=["accuracy_by_task", "accuracy_by_group", "cost", "anchors_alone"],
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
    if config["llm"]["enabled"]:  # Stitched LLaMA (rules/llm.smk)
        out += llm_targets()
    return out


def ls_init_anchors(w):
    if w.method == "esta":
        return anchor_files(w)
    return expand(f"{run_dir(w)}/{w.mode}/adapt/anchor{{i}}.safetensors", i=ANCHORS)


def esta_stages(variant):
    return method_config(variant)["esta"]["stages"]


def esta_stitch_init(mode=None):
    """Input function: ESTA's LS-initialised stitching layers depend only on the pretrained anchors,
    the task and the seed, so every one-stage ESTA variant uses those of the default variant; a
    three-stage variant fits its own on its adapted anchors."""

    def inputs(w):
        m = mode or w.mode
        v = w.variant if esta_stages(w.variant) == "three" else "default"
        return f"{R}/esta/{v}/{w.task}/seed{w.seed}/{m}/stitch_init.safetensors"

    return inputs


def three_stage_costs():
    """cost_table's inputs for three-stage ESTA (the stages ablation's three-stage variants, on the
    ablation tasks): the benchmark of every job of its three steps, and the runs' train.json.
    """
    three = [v for v in ABL["stages"] if esta_stages(v) == "three"]
    B, run = f"{R}/benchmarks", "{variant}/{task}/seed{seed}"
    modes = sorted({"tuning", eval_mode()})
    kw = dict(variant=three, task=ABL["tasks"], seed=config["seeds"])
    bench = expand(
        f"{B}/esta_adapt_anchor/{run}/{{mode}}/anchor{{i}}.tsv",
        mode=modes,
        i=ANCHORS,
        **kw,
    )
    bench += expand(f"{B}/ls_init/esta/{run}/{{mode}}.tsv", mode=modes, **kw)
    bench += expand(f"{B}/train_esta/{run}/{{mode}}.tsv", mode=modes, **kw)
    bench += expand(f"{B}/select_esta/{run}.tsv", **kw)
    # the runs behind the reported accuracy (final mode with retrain_final)
    info = expand(f"{R}/esta/{run}/{eval_mode()}/train.json", **kw)
    adapt = expand(
        f"{R}/esta/{run}/{eval_mode()}/stage1/anchor{{i}}.json", i=ANCHORS, **kw
    )
    return dict(three_bench=bench, three_info=info, three_adapt_info=adapt)


def adapted_anchor_states(w):
    """Input function: stage 1 of a three-stage ESTA variant (each anchor adapted alone by PST);
    nothing for one-stage ESTA and for SN-Net."""
    if w.get("method", "esta") != "esta" or esta_stages(w.variant) != "three":
        return []
    return expand(
        f"{R}/esta/{w.variant}/{w.task}/seed{w.seed}/{w.mode}/stage1/anchor{{i}}.safetensors",
        i=ANCHORS,
    )


def trained_model(mode):
    """Input function: anchors, stitching layers and trained state of the `mode` model."""

    def inputs(w):
        d = f"{run_dir(w)}/{mode}"
        if w.method == "esta":
            anchors = anchor_files(w)
            stitch = esta_stitch_init(mode)(w)
        else:
            anchors = expand(f"{d}/adapt/anchor{{i}}.safetensors", i=ANCHORS)
            stitch = f"{d}/stitch_init.safetensors"
        return dict(
            anchors=anchors,
            stitch=stitch,
            model=f"{d}/model.safetensors",
        )

    return inputs


# the model whose test accuracy is reported (final mode when retrain_final)
model_inputs = trained_model(eval_mode())


def benchmark_files(variants=("default",)):
    """The benchmark file of every heavy job behind the default figures."""
    B = f"{R}/benchmarks"
    modes = sorted({"tuning", eval_mode()})
    run = "{variant}/{task}/seed{seed}"
    kw = dict(variant=variants, task=config["tasks"], seed=config["seeds"])
    anchor_step = {
        "pretrain": "pretrain_anchor",
        "shipped": "install_shipped_anchor",
        "files": "register_weights",
    }[config["anchors"]["source"]]
    files = expand(f"{B}/{anchor_step}/{config['family']}/anchor{{i}}.tsv", i=ANCHORS)
    files += expand(f"{B}/register_data/{{task}}.tsv", task=EXTERNAL)
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
    files += expand(f"{B}/evaluate_stitches/snnet/{run}/selection.tsv", **kw)
    files += expand(
        f"{B}/{{step}}/{{method}}/{run}.tsv",
        step=["evaluate_deployed", "export_deployed"],
        method=METHODS,
        **kw,
    )
    if config["llm"]["enabled"]:
        files += llm_benchmark_files()
    return files


# ------------------------------------------------------------------------------------------------
# Stitched LLaMA (rules/llm.smk, spec §11)
LLM = config["llm"]
L = f"{R}/llm"
LLM_ANCHORS = list(range(2))  # a pair, small first (spec §11)
LLM_PRETRAIN = LLM["anchors"]["source"] == "pretrain"
# shipped: the tiny pair in esta/llm/assets/<family>/ (pretrained by config/upstream.yaml), installed
# into the folders `pretrain` writes; folders: local HF folders, registered where they are
LLM_SHIPPED = LLM["anchors"]["source"] == "shipped"
LLM_FOLDERS = (
    [f"{L}/anchors/anchor{i}" for i in LLM_ANCHORS]
    if LLM_PRETRAIN or LLM_SHIPPED
    else (LLM["anchors"]["folders"] or [None, None])
)
LLM_VARIANTS = ["default"] + (["no_biases"] if LLM["ablate_biases"] else [])
LLM_CODE = code(
    "llm/anchors",
    "llm/stitch",
    "llm/tuning",
    "llm/data",
    "llm/build",
    "lstsq",
    "vit/stitch",
    "vit/build",
)
LLM_SPLITS = ["pretrain_train", "pretrain_test", "train", "test"]


def llm_pst(w):
    """PST settings of an LLM variant: `no_biases` is shared LoRA without stitch biases."""
    return dict(
        LLM["pst"],
        stitch_biases=LLM["pst"]["stitch_biases"] and w.get("variant") != "no_biases",
    )


def llm_anchor_info():
    return expand(f"{L}/anchors/anchor{{i}}.json", i=LLM_ANCHORS)


def llm_targets():
    """What `rule all` builds when llm.enabled (the figure needs every other LLM result)."""
    out = [f"{R}/tables/llm_pareto.csv", f"{R}/tables/llm_stitches.csv"]
    return out + expand(f"{R}/figures/llm_pareto.{{ext}}", ext=["pdf", "png"])


def llm_benchmark_files():
    """The benchmark file of every heavy LLM job, for merge_benchmarks."""
    B = f"{R}/benchmarks"
    step = {
        "pretrain": "llm_pretrain_anchor",
        "shipped": "llm_install_anchor",
        "folders": "llm_register_anchor",
    }[LLM["anchors"]["source"]]
    files = expand(f"{B}/{step}/anchor{{i}}.tsv", i=LLM_ANCHORS) + [
        f"{B}/llm_ls_init.tsv"
    ]
    kw = dict(variant=LLM_VARIANTS, seed=config["seeds"])
    for step in ("llm_train_esta", "llm_evaluate", "llm_export"):
        files += expand(f"{B}/{step}/{{variant}}/seed{{seed}}.tsv", **kw)
    for step in ("llm_adapt_anchor", "llm_evaluate_anchor"):
        files += expand(
            f"{B}/{step}/seed{{seed}}/anchor{{i}}.tsv",
            seed=config["seeds"],
            i=LLM_ANCHORS,
        )
    return files
