# Stitched LLaMA (spec §11): prepare -> pretrain or register the anchors -> check -> LS init ->
# train (ESTA over every stitch; each anchor alone as the baseline) -> select -> evaluate -> export
# -> results/tables/llm_pareto.csv and results/figures/llm_pareto.{pdf,png}.
# Globals and input functions: rules/common.smk (LLM, L, LLM_FOLDERS, llm_pst, ...).

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
        code=code("llm/costs") + LLM_CODE,
    output:
        f"{R}/tables/llm_stitches.csv",
    log:
        f"{R}/logs/llm_stitch_table.log",
    priority: 10
    conda:
        "../envs/esta.yaml"
    params:
        folders=LLM_FOLDERS,
    script:
        "../scripts/llm_stitch_table.py"


rule llm_ls_init:
    input:
        check=f"{L}/anchors/check.json",
        tokenizer=f"{L}/data/tokenizer",
        train=f"{L}/data/train.json",
        code=LLM_CODE,
    output:
        stitch=f"{L}/stitch_init.safetensors",
        info=f"{L}/stitch_init.json",
    log:
        f"{R}/logs/llm_ls_init.log",
    benchmark:
        f"{R}/benchmarks/llm_ls_init.tsv"
    priority: 10
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        folders=LLM_FOLDERS,
        dtype=LLM["dtype"],
        tokenizer=LLM["tokenizer"],
        ls_init=LLM["ls_init"],
    script:
        "../scripts/llm_ls_init.py"


LLM_TRAIN_PARAMS = dict(
    torch_threads=config["threads"],
    folders=LLM_FOLDERS,
    dtype=LLM["dtype"],
    tokenizer=LLM["tokenizer"],
    device=config["device"],
    checkpoint_every_s=config["checkpoint_every_s"],
)


rule llm_train_esta:
    input:
        stitch=f"{L}/stitch_init.safetensors",
        stitches=f"{R}/tables/llm_stitches.csv",
        tokenizer=f"{L}/data/tokenizer",
        train=f"{L}/data/train.json",
        code=code("train", "sampling", "pareto") + LLM_CODE,
    output:
        model=f"{L}/esta/{{variant}}/seed{{seed}}/model.safetensors",
        history=f"{L}/esta/{{variant}}/seed{{seed}}/train_log.csv",
        stats=f"{L}/esta/{{variant}}/seed{{seed}}/importance.csv",
        info=f"{L}/esta/{{variant}}/seed{{seed}}/train.json",
    log:
        f"{R}/logs/llm_train_esta/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_train_esta/{{variant}}/seed{{seed}}.tsv"
    wildcard_constraints:
        variant="default|no_biases",
    # the longest job of rule all (6-12 min of one core): it and the chain that feeds it start
    # first, so it does not run alone at the end while the other core idles
    priority: 10
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        **LLM_TRAIN_PARAMS,
        pst=llm_pst,
        train=LLM["train"],
        sampler=LLM["sampler"],
        intervals=LLM["deploy"]["intervals"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/llm/esta/{w.variant}/seed{w.seed}",
    script:
        "../scripts/llm_train.py"


rule llm_adapt_anchor:
    """The baseline: one anchor adapted alone with the same LoRA recipe (its biases included)."""
    input:
        check=f"{L}/anchors/check.json",
        tokenizer=f"{L}/data/tokenizer",
        train=f"{L}/data/train.json",
        code=code("train", "sampling", "pareto") + LLM_CODE,
    output:
        model=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/model.safetensors",
        history=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/train_log.csv",
        stats=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/importance.csv",
        info=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/train.json",
    log:
        f"{R}/logs/llm_adapt_anchor/seed{{seed}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/llm_adapt_anchor/seed{{seed}}/anchor{{i}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        **LLM_TRAIN_PARAMS,
        pst=llm_pst,
        train={**LLM["train"], **LLM["adapt"]},
        ckpt_dir=lambda w: f"{R}/.checkpoints/llm/anchor_ft/seed{w.seed}/anchor{w.i}",
    script:
        "../scripts/llm_train.py"


rule llm_select:
    """One-stage deployment from training-time importance, intervals over stitch parameters."""
    input:
        stats=f"{L}/esta/{{variant}}/seed{{seed}}/importance.csv",
        stitches=f"{R}/tables/llm_stitches.csv",
        code=code("pareto"),
    output:
        f"{L}/esta/{{variant}}/seed{{seed}}/deployed.csv",
    log:
        f"{R}/logs/llm_select/{{variant}}/seed{{seed}}.log",
    conda:
        "../envs/esta.yaml"
    params:
        deploy=LLM["deploy"],
    script:
        "../scripts/llm_select.py"


LLM_EVAL_PARAMS = dict(
    torch_threads=config["threads"],
    folders=LLM_FOLDERS,
    dtype=LLM["dtype"],
    tokenizer=LLM["tokenizer"],
    eval=LLM["eval"],
    device=config["device"],
)


rule llm_evaluate:
    input:
        model=f"{L}/esta/{{variant}}/seed{{seed}}/model.safetensors",
        stitch=f"{L}/stitch_init.safetensors",
        deployed=f"{L}/esta/{{variant}}/seed{{seed}}/deployed.csv",
        stitches=f"{R}/tables/llm_stitches.csv",
        tokenizer=f"{L}/data/tokenizer",
        test=f"{L}/data/test.json",
        code=code("llm/evaluate") + LLM_CODE,
    output:
        metrics=f"{L}/esta/{{variant}}/seed{{seed}}/metrics.csv",
        samples=f"{L}/esta/{{variant}}/seed{{seed}}/samples.csv",
    log:
        f"{R}/logs/llm_evaluate/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_evaluate/{{variant}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        **LLM_EVAL_PARAMS,
        pst=llm_pst,
    script:
        "../scripts/llm_evaluate.py"


rule llm_evaluate_anchor:
    input:
        model=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/model.safetensors",
        stitches=f"{R}/tables/llm_stitches.csv",
        tokenizer=f"{L}/data/tokenizer",
        test=f"{L}/data/test.json",
        code=code("llm/evaluate") + LLM_CODE,
    output:
        metrics=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/metrics.csv",
        samples=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/samples.csv",
    log:
        f"{R}/logs/llm_evaluate_anchor/seed{{seed}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/llm_evaluate_anchor/seed{{seed}}/anchor{{i}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        **LLM_EVAL_PARAMS,
        pst=llm_pst,
    script:
        "../scripts/llm_evaluate.py"


rule llm_export:
    input:
        model=f"{L}/esta/{{variant}}/seed{{seed}}/model.safetensors",
        stitch=f"{L}/stitch_init.safetensors",
        deployed=f"{L}/esta/{{variant}}/seed{{seed}}/deployed.csv",
        tokenizer=f"{L}/data/tokenizer",
        code=code("llm/export") + LLM_CODE,
    output:
        directory(f"{L}/esta/{{variant}}/seed{{seed}}/deployed"),
    log:
        f"{R}/logs/llm_export/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_export/{{variant}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    params:
        folders=LLM_FOLDERS,
        dtype=LLM["dtype"],
        pst=llm_pst,
    script:
        "../scripts/llm_export.py"


rule llm_pareto_table:
    input:
        esta=expand(
            f"{L}/esta/{{variant}}/seed{{seed}}/metrics.csv",
            variant=LLM_VARIANTS,
            seed=config["seeds"],
        ),
        anchor_ft=expand(
            f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/metrics.csv",
            i=LLM_ANCHORS,
            seed=config["seeds"],
        ),
        exported=expand(
            f"{L}/esta/{{variant}}/seed{{seed}}/deployed",
            variant=LLM_VARIANTS,
            seed=config["seeds"],
        ),
    output:
        f"{R}/tables/llm_pareto.csv",
    log:
        f"{R}/logs/llm_pareto_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        n_anchors=len(LLM_ANCHORS),
        # the variant of each `esta` / `exported` input, in expand's order
        esta_variants=[v for v in LLM_VARIANTS for _ in config["seeds"]],
    script:
        "../scripts/llm_pareto_table.py"


rule plot_llm_pareto:
    input:
        table=f"{R}/tables/llm_pareto.csv",
    output:
        pdf=f"{R}/figures/llm_pareto.pdf",
        png=f"{R}/figures/llm_pareto.png",
    log:
        f"{R}/logs/plot_llm_pareto.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/plot.py"
