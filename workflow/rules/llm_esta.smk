# Stitched LLaMA (spec §11), part 2: LS init -> train (ESTA over every stitch; each anchor alone as
# the baseline) -> select -> evaluate -> export -> results/tables/llm_pareto.csv and
# results/figures/llm_pareto.{pdf,png}. Part 1 (data, anchors, stitch table) is rules/llm_anchors.smk.


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
        stitch_rule=LLM["rule"],
        tokenizer=LLM["tokenizer"],
        ls_init=LLM["ls_init"],
    script:
        "../scripts/llm_ls_init.py"


LLM_TRAIN_PARAMS = dict(
    torch_threads=config["threads"],
    folders=LLM_FOLDERS,
    dtype=LLM["dtype"],
    stitch_rule=LLM["rule"],
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
    # llm.nproc data-parallel processes (torchrun inside the job, esta.llm.job.launch), each of
    # `threads` torch threads: the job asks for all of them (under SLURM, --cpus-per-task =
    # threads x nproc in one task, the allocation torchrun --standalone starts its ranks in)
    threads: heavy_threads() * LLM["nproc"]
    params:
        **{**LLM_TRAIN_PARAMS, "torch_threads": config["threads"] * LLM["nproc"]},
        pst=llm_pst,
        train=LLM["train"],
        sampler=LLM["sampler"],
        intervals=LLM["deploy"]["intervals"],
        loss_window=LLM["deploy"]["loss"],
        nproc=LLM["nproc"],
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
        nproc=1,
        ckpt_dir=lambda w: f"{R}/.checkpoints/llm/anchor_ft/seed{w.seed}/anchor{w.i}",
    script:
        "../scripts/llm_train.py"


rule llm_select:
    """One-stage deployment by `llm.deploy.score` (esta.scores), intervals over stitch parameters."""
    input:
        unpack(llm_select_inputs),
    output:
        deployed=f"{L}/esta/{{variant}}/seed{{seed}}/deployed.csv",
        scores=f"{L}/esta/{{variant}}/seed{{seed}}/scores.csv",
    log:
        f"{R}/logs/llm_select/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_select/{{variant}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        deploy=LLM["deploy"],
        score=lambda w: w.get("how") or LLM["deploy"]["score"],
        folders=LLM_FOLDERS,
        dtype=LLM["dtype"],
        stitch_rule=LLM["rule"],
        tokenizer=LLM["tokenizer"],
        pst=llm_pst,
        eval_batch_size=LLM["eval"]["batch_size"],
        device=config["device"],
    script:
        "../scripts/llm_select.py"


use rule llm_select as llm_select_by with:
    """The same deployment by each training-time score, whatever the config says (the score
    table compares them)."""
    output:
        deployed=f"{L}/esta/{{variant}}/seed{{seed}}/deployed_{{how}}.csv",
        scores=f"{L}/esta/{{variant}}/seed{{seed}}/scores_{{how}}.csv",
    log:
        f"{R}/logs/llm_select/{{variant}}/seed{{seed}}_{{how}}.log",
    benchmark:
        f"{R}/benchmarks/llm_select/{{variant}}/seed{{seed}}_{{how}}.tsv"
    wildcard_constraints:
        how="importance|loss|loss_batch",


LLM_EVAL_PARAMS = dict(
    torch_threads=config["threads"],
    folders=LLM_FOLDERS,
    dtype=LLM["dtype"],
    stitch_rule=LLM["rule"],
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
        mc=f"{L}/data/mc.json",
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


use rule llm_evaluate as llm_evaluate_stitches with:
    """Every stitch of a run on the held-out records: the one stitch set the score table judges every
    score and the oracle (best exact match per interval) by (spec §6, "like with like").
    """
    input:
        model=f"{L}/esta/{{variant}}/seed{{seed}}/model.safetensors",
        stitch=f"{L}/stitch_init.safetensors",
        stitches=f"{R}/tables/llm_stitches.csv",
        tokenizer=f"{L}/data/tokenizer",
        test=f"{L}/data/test.json",
        mc=f"{L}/data/mc.json",
        code=code("llm/evaluate") + LLM_CODE,
    output:
        metrics=f"{L}/esta/{{variant}}/seed{{seed}}/stitch_metrics.csv",
    log:
        f"{R}/logs/llm_evaluate_stitches/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_evaluate_stitches/{{variant}}/seed{{seed}}.tsv"


rule llm_evaluate_anchor:
    input:
        model=f"{L}/anchor_ft/seed{{seed}}/anchor{{i}}/model.safetensors",
        stitches=f"{R}/tables/llm_stitches.csv",
        tokenizer=f"{L}/data/tokenizer",
        test=f"{L}/data/test.json",
        mc=f"{L}/data/mc.json",
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
        stitch_rule=LLM["rule"],
        pst=llm_pst,
    script:
        "../scripts/llm_export.py"


rule llm_lm_eval_task:
    """The held-out multiple-choice items as a local lm-eval task (esta_llm_mc): JSON lines + YAML."""
    input:
        mc=f"{L}/data/mc.json",
        code=code("llm/lm_eval_adapter"),
    output:
        directory(f"{L}/lm_eval_tasks"),
    log:
        f"{R}/logs/llm_lm_eval_task.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/llm_lm_eval_task.py"


rule llm_lm_eval:
    """lm-evaluation-harness scores of every exported deployed stitch (llm.lm_eval), local tasks only."""
    input:
        exported=expand(
            f"{L}/esta/{{variant}}/seed{{seed}}/deployed",
            variant=LLM_VARIANTS,
            seed=config["seeds"],
        ),
        tasks=(
            f"{L}/lm_eval_tasks"
            if LLM["lm_eval"]["include_path"] is None
            else LLM["lm_eval"]["include_path"]
        ),
        code=code("llm/lm_eval_adapter", "llm/export"),
    output:
        f"{R}/tables/llm_lm_eval.csv",
    log:
        f"{R}/logs/llm_lm_eval.log",
    benchmark:
        f"{R}/benchmarks/llm_lm_eval.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        lm_eval=LLM["lm_eval"],
        batch_size=LLM["eval"]["batch_size"],
        # the variant and seed of each `exported` input, in expand's order
        runs=[(v, s) for v in LLM_VARIANTS for s in config["seeds"]],
    script:
        "../scripts/llm_lm_eval.py"


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


LLM_SELECTIONS = ["importance", "loss", "loss_batch"]


rule llm_score_table:
    """Each training-time score against held-out exact match, judged like with like (spec §6, §11;
    esta.compare): rho over the stitches every score ranks, every stitch evaluated
    (llm_evaluate_stitches), and each deployment's exact match over the intervals the oracle fills.
    """
    input:
        scores=expand(
            f"{L}/esta/default/seed{{seed}}/scores_{{how}}.csv",
            seed=config["seeds"],
            how=LLM_SELECTIONS,
        ),
        deployed=expand(
            f"{L}/esta/default/seed{{seed}}/deployed_{{how}}.csv",
            seed=config["seeds"],
            how=LLM_SELECTIONS,
        ),
        bench=expand(
            f"{R}/benchmarks/llm_select/default/seed{{seed}}_{{how}}.tsv",
            seed=config["seeds"],
            how=LLM_SELECTIONS,
        ),
        metrics=expand(
            f"{L}/esta/default/seed{{seed}}/stitch_metrics.csv", seed=config["seeds"]
        ),
        stitches=f"{R}/tables/llm_stitches.csv",
        code=code("scores", "pareto", "compare"),
    output:
        f"{R}/tables/llm_selection_scores.csv",
    log:
        f"{R}/logs/llm_score_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        seeds=config["seeds"],
        selections=LLM_SELECTIONS,
        intervals=LLM["deploy"]["intervals"],
    script:
        "../scripts/llm_score_table.py"
