# Stitched LLaMA (spec §11), part 1: prepare the data -> pretrain, install or register the anchors ->
# check that the larger is better -> the stitch table. Part 2 (LS init, training, deployment,
# evaluation, export, tables) is rules/llm_esta.smk; globals and input functions rules/llm_common.smk.

# llm.anchors.source: shipped installs the tiny pair shipped in esta/llm/assets/<family>/ (pretrained
# at length by config/upstream.yaml) into the same folders as `pretrain` writes (common.smk).
LLM_ASSETS = "esta/llm/assets"
LLM_SHIP_COMMAND = (
    "snakemake llm_ship_anchors --configfile config/upstream.yaml --cores 2"
)


rule llm_prepare:
    input:
        **(
            {"shipped": f"{LLM_ASSETS}/{LLM['family']}/manifest.json"}
            if LLM_SHIPPED
            else {}
        ),
        code=code("llm/tasks", "llm/data", "llm/build", "llm/shipped"),
        # shipped anchors bring their tokenizer
    output:
        **{s: f"{L}/data/{s}.json" for s in LLM_SPLITS},
        mc=f"{L}/data/mc.json",
        tokenizer=directory(f"{L}/data/tokenizer"),
        info=f"{L}/data/data.json",
    log:
        f"{R}/logs/llm_prepare.log",
    # priority: the chain to llm_train_esta, the longest job, goes first
    priority: 10
    conda:
        "../envs/esta.yaml"
    params:
        suite=LLM["suite"],
        tokenizer=LLM["tokenizer"],
        anchors=LLM["anchors"],
        alpaca_json=LLM["alpaca_json"],
        mc={k: LLM["eval"][k] for k in ("n_mc", "mc_choices")},
    script:
        "../scripts/llm_prepare.py"


if LLM_PRETRAIN:

    rule llm_pretrain_anchor:
        input:
            tokenizer=f"{L}/data/tokenizer",
            train=f"{L}/data/pretrain_train.json",
            test=f"{L}/data/pretrain_test.json",
            code=code("llm/pretrain", "llm/evaluate", "train", "sampling") + LLM_CODE,
        output:
            folder=directory(f"{L}/anchors/anchor{{i}}"),
            info=f"{L}/anchors/anchor{{i}}.json",
        log:
            f"{R}/logs/llm_pretrain_anchor/anchor{{i}}.log",
        benchmark:
            f"{R}/benchmarks/llm_pretrain_anchor/anchor{{i}}.tsv"
        conda:
            "../envs/esta.yaml"
        threads: heavy_threads()
        params:
            torch_threads=config["threads"],
            family=LLM["family"],
            pretrain=LLM["pretrain"],
            tokenizer=LLM["tokenizer"],
            eval=LLM["eval"],
            seed=LLM["suite"]["seed"],
            device=config["device"],
            checkpoint_every_s=config["checkpoint_every_s"],
            ckpt_dir=lambda w: f"{R}/.checkpoints/llm/pretrain/anchor{w.i}",
        script:
            "../scripts/llm_pretrain_anchor.py"

elif LLM_SHIPPED:

    rule llm_install_anchor:
        """One shipped anchor as the run's HF folder, checked against the manifest (sha256 of every file)."""
        input:
            manifest=f"{LLM_ASSETS}/{LLM['family']}/manifest.json",
            code=code("llm/shipped"),
        output:
            folder=directory(f"{L}/anchors/anchor{{i}}"),
            info=f"{L}/anchors/anchor{{i}}.json",
        log:
            f"{R}/logs/llm_install_anchor/anchor{{i}}.log",
        benchmark:
            f"{R}/benchmarks/llm_install_anchor/anchor{{i}}.tsv"
        priority: 10
        conda:
            "../envs/esta.yaml"
        script:
            "../scripts/llm_install_anchor.py"

else:

    rule llm_register_anchor:
        input:
            test=f"{L}/data/test.json",
            code=code("llm/evaluate") + LLM_CODE,
        output:
            info=f"{L}/anchors/anchor{{i}}.json",
        log:
            f"{R}/logs/llm_register_anchor/anchor{{i}}.log",
        benchmark:
            f"{R}/benchmarks/llm_register_anchor/anchor{{i}}.tsv"
        conda:
            "../envs/esta.yaml"
        threads: heavy_threads()
        params:
            torch_threads=config["threads"],
            folder=lambda w: LLM_FOLDERS[int(w.i)],
            dtype=LLM["dtype"],
            tokenizer=LLM["tokenizer"],
            eval=LLM["eval"],
            device=config["device"],
        script:
            "../scripts/llm_register_anchor.py"


if LLM_PRETRAIN and LLM["family"] == "tiny":

    rule llm_ship_anchors:
        """Store the pretrained tiny pair in the package with a manifest (sha256, command, recipe,
        tasks-A exact match of the stored weights): run with config/upstream.yaml, then commit
        esta/llm/assets/."""
        input:
            folders=expand(f"{L}/anchors/anchor{{i}}", i=LLM_ANCHORS),
            infos=llm_anchor_info(),
            train=f"{L}/data/pretrain_train.json",
            test=f"{L}/data/pretrain_test.json",
            code=code("llm/shipped", "llm/evaluate") + LLM_CODE,
        output:
            f"{LLM_ASSETS}/{LLM['family']}/manifest.json",
        log:
            f"{R}/logs/llm_ship_anchors.log",
        conda:
            "../envs/esta.yaml"
        params:
            family=LLM["family"],
            recipe=dict(
                suite=LLM["suite"],
                tokenizer=LLM["tokenizer"],
                pretrain=LLM["pretrain"],
            ),
            eval=LLM["eval"],
            command=LLM_SHIP_COMMAND,
        script:
            "../scripts/llm_ship_anchors.py"


rule llm_check_anchors:
    """The larger anchor must beat the smaller before anything is stitched."""
    input:
        infos=llm_anchor_info(),
    output:
        f"{L}/anchors/check.json",
    log:
        f"{R}/logs/llm_check_anchors.log",
    priority: 10
    conda:
        "../envs/esta.yaml"
    params:
        check=LLM["anchors"]["check"],
    script:
        "../scripts/llm_check_anchors.py"


rule llm_stitch_table:
    input:
        infos=llm_anchor_info(),
        code=code("llm/costs", "costs") + LLM_CODE,
    output:
        f"{R}/tables/llm_stitches.csv",
    log:
        f"{R}/logs/llm_stitch_table.log",
    priority: 10
    conda:
        "../envs/esta.yaml"
    params:
        folders=LLM_FOLDERS,
        stitch_rule=LLM["rule"],
    script:
        "../scripts/llm_stitch_table.py"
