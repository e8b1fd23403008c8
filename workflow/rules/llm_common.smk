# Stitched LLaMA (spec §11): the `llm` slice's globals and input functions, used by
# rules/llm_anchors.smk and rules/llm_esta.smk.
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
    "stitches",
    "lstsq",
    "tensors",
    "tunable",
)
if LLM["enabled"] and LLM["anchors"]["source"] == "folders" and None not in LLM_FOLDERS:
    # refused before any job: a pair of different vocabularies or widths out of order
    from esta.llm.checks import check_folders

    check_folders(LLM_FOLDERS)
if LLM["enabled"] and LLM["rule"] == "paired":
    # refused before any job: SN-Net's paired rule needs anchors of equal depth (esta.stitches)
    from esta.llm.anchors import check_rule

    check_rule(
        LLM["family"],
        LLM["rule"],
        LLM_FOLDERS if LLM["anchors"]["source"] == "folders" else None,
    )
if LLM["enabled"]:
    # refused before any job: too few held-out records for the multiple-choice items' distractors
    from esta.llm.checks import check_choices

    check_choices(
        LLM["suite"]["n_test"], LLM["eval"]["n_mc"], LLM["eval"]["mc_choices"]
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
    out = [
        f"{R}/tables/llm_pareto.csv",
        f"{R}/tables/llm_stitches.csv",
        f"{R}/tables/llm_lm_eval.csv",
        f"{R}/tables/llm_selection_scores.csv",
    ]
    out += expand(f"{L}/esta/default/seed{{seed}}/palette", seed=config["seeds"])
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
    files.append(f"{B}/llm_lm_eval.tsv")
    for step in (
        "llm_train_esta",
        "llm_evaluate",
        "llm_export",
        "llm_palette",
        "llm_palette_latency",
    ):
        files += expand(f"{B}/{step}/{{variant}}/seed{{seed}}.tsv", **kw)
    # every stitch evaluated, for the score table (default variant only)
    files += expand(
        f"{B}/llm_evaluate_stitches/default/seed{{seed}}.tsv", seed=config["seeds"]
    )
    for step in ("llm_adapt_anchor", "llm_evaluate_anchor"):
        files += expand(
            f"{B}/{step}/seed{{seed}}/anchor{{i}}.tsv",
            seed=config["seeds"],
            i=LLM_ANCHORS,
        )
    return files


def llm_select_inputs(w):
    """What an LLM deployment reads: the training statistics and the stitch table; for `loss_batch`
    the trained model, its tokenizer and training records too."""
    run = f"{L}/esta/{w.variant}/seed{w.seed}"
    files = dict(
        stats=f"{run}/importance.csv",
        stitches=f"{R}/tables/llm_stitches.csv",
        code=code("scores", "pareto"),
    )
    if (w.get("how") or LLM["deploy"]["score"]) == "loss_batch":
        files.update(
            model=f"{run}/model.safetensors",
            stitch=f"{L}/stitch_init.safetensors",
            tokenizer=f"{L}/data/tokenizer",
            train=f"{L}/data/train.json",
            code=code("scores", "pareto", "llm/evaluate") + LLM_CODE,
        )
    return files
