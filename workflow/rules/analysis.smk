rule accuracy_tables:
    """Deployed accuracy per task and per group (Natural/Specialized/Structured/FGVC/mean), mean ±
    std over seeds (spec §9)."""
    input:
        deployed=f"{R}/tables/deployed.csv",
        controls=f"{R}/tables/anchors_alone.csv",
        # the dense tasks' rows (metric miou), when dense.enabled (rules/dense_common.smk)
        dense_deployed=dense_runs("deployed.csv") if DENSE["enabled"] else [],
        dense_adapt=dense_adapt_infos() if DENSE["enabled"] else [],
        code=code("pareto", "vit/seg_tables", "vit/tasks"),
    output:
        by_task=f"{R}/tables/accuracy_by_task.csv",
        by_group=f"{R}/tables/accuracy_by_group.csv",
    log:
        f"{R}/logs/accuracy_tables.log",
    conda:
        "../envs/esta.yaml"
    params:
        dense=DENSE["enabled"],
    script:
        "../scripts/accuracy_tables.py"


rule cost_table:
    """Trainable and stored parameters, optimizer steps, wall time and peak memory per method and
    step (spec §9), with three-stage ESTA (the stages ablation) beside one-stage ESTA and SN-Net.
    """
    input:
        unpack(lambda w: three_stage_costs()),
        # the dense tasks' rows (metric miou), when dense.enabled (rules/dense_common.smk)
        unpack(lambda w: dense_cost_inputs()),
        benchmarks=f"{R}/tables/benchmarks.csv",
        deployed=f"{R}/tables/deployed.csv",
        adapt_info=expand(
            f"{R}/snnet/default/{{task}}/seed{{seed}}/{{mode}}/adapt/anchor{{i}}.json",
            task=config["tasks"],
            seed=config["seeds"],
            mode=eval_mode(),
            i=ANCHORS,
        ),
        data=expand(f"{R}/data/{{task}}/manifest.json", task=config["tasks"]),
        code=code(
            "analysis",
            "vit/seg_tables",
            "vit/info",
            "vit/tuning",
            "vit/anchors",
            "vit/stitch",
            "vit/build",
            "vit/data",
            "vit/tasks",
        ),
    output:
        f"{R}/tables/cost.csv",
    log:
        f"{R}/logs/cost_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        family=FAMILY,
        img_size=config["data"]["img_size"],
        method=method_config("default"),
        three={v: method_config(v) for v in ABL["stages"] if esta_stages(v) == "three"},
        dense=DENSE if DENSE["enabled"] else None,
    script:
        "../scripts/cost_table.py"


rule ablation_table:
    """One ablation of spec §9: the deployed curves of the variants it compares, or (selection) of
    the two deployments of one trained model, averaged over the ablation tasks."""
    input:
        unpack(ablation_inputs),
    output:
        f"{R}/tables/ablation_{{name}}.csv",
    log:
        f"{R}/logs/ablation_table/{{name}}.log",
    wildcard_constraints:
        name="bias|sampling|selection|rank|peft|stages",
    conda:
        "../envs/esta.yaml"
    params:
        variants=lambda w: {
            v: method_config(v)["esta"] for v in ablation_variants(w.name)
        },
        intervals=config["deploy"]["intervals"],
        runs=SCORE_RUNS,
        selections=SELECTIONS,
    script:
        "../scripts/ablation_table.py"


rule score_tables:
    """Each deployment score against test accuracy (spec §6, §10): Spearman rho over all stitches and
    the deployed accuracy per score and task, with the oracle and the loss window grid.
    """
    input:
        unpack(score_inputs),
        stitches=f"{R}/tables/stitches.csv",
        code=code("scores", "pareto", "compare"),
    output:
        summary=f"{R}/tables/selection_scores.csv",
        runs=f"{R}/tables/selection_scores_runs.csv",
        stitches=f"{R}/tables/importance_vs_accuracy.csv",
    log:
        f"{R}/logs/score_tables.log",
    conda:
        "../envs/esta.yaml"
    params:
        runs=SCORE_RUNS,
        selections=SELECTIONS,
        intervals=config["deploy"]["intervals"],
        min_visits=config["deploy"]["min_visits"],
        bench=[score_benchmarks(t, s) for t, s in SCORE_RUNS],
    script:
        "../scripts/score_tables.py"


rule dip_table:
    """Why the middle of the palette dips (issue 31): per stitch of every default ESTA run, test
    accuracy against training visits, slot size, LS residual of its stitching layer and position; per
    task and anchor pair, the stitches below both anchors and rho of accuracy against each.
    """
    input:
        test=expand(
            f"{R}/esta/default/{{task}}/seed{{seed}}/tuning/stitch_accuracy_test.csv",
            zip,
            task=[t for t, _ in SCORE_RUNS],
            seed=[s for _, s in SCORE_RUNS],
        ),
        stats=expand(
            f"{R}/esta/default/{{task}}/seed{{seed}}/tuning/importance.csv",
            zip,
            task=[t for t, _ in SCORE_RUNS],
            seed=[s for _, s in SCORE_RUNS],
        ),
        init=expand(
            f"{R}/esta/default/{{task}}/seed{{seed}}/tuning/stitch_init.safetensors",
            zip,
            task=[t for t, _ in SCORE_RUNS],
            seed=[s for _, s in SCORE_RUNS],
        ),
        stitches=f"{R}/tables/stitches.csv",
        code=code("pareto", "scores", "tensors"),
    output:
        stitches=f"{R}/tables/dip.csv",
        summary=f"{R}/tables/dip_summary.csv",
    log:
        f"{R}/logs/dip_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        runs=SCORE_RUNS,
        intervals=config["deploy"]["intervals"],
    script:
        "../scripts/dip_table.py"


rule grad_interference:
    """Cosines between the shared-LoRA gradients of stitch pairs on one batch, at snapshots of
    training (spec §10)."""
    input:
        anchors=anchor_files,
        stitch=esta_stitch_init("tuning"),
        snapshots=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/snapshots.safetensors",
        data=f"{R}/data/{{task}}/manifest.json",
        code=code("analysis", "vit/tuning", "vit/build", "vit/data", "vit/tasks"),
    output:
        f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/grad_interference.csv",
    log:
        f"{R}/logs/grad_interference/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/grad_interference/{{variant}}/{{task}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: method_config(w.variant)["esta"],
        img_size=config["data"]["img_size"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
    script:
        "../scripts/grad_interference.py"


rule grad_interference_table:
    input:
        expand(
            f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/grad_interference.csv",
            variant=ABL["bias"],
            task=ABL["tasks"],
            seed=config["seeds"][:1],
        ),
    output:
        f"{R}/tables/grad_interference.csv",
    log:
        f"{R}/logs/grad_interference_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        variants={v: method_config(v)["esta"]["stitch_biases"] for v in ABL["bias"]},
    script:
        "../scripts/grad_table.py"


rule plot:
    """Every figure except the Pareto ones, from its CSV twin (plots only)."""
    input:
        table=f"{R}/tables/{{fig}}.csv",
    output:
        pdf=report(
            f"{R}/figures/{{fig}}.pdf",
            caption="../report/analysis.rst",
            category="Analyses",
        ),
        png=f"{R}/figures/{{fig}}.png",
    log:
        f"{R}/logs/plot/{{fig}}.log",
    wildcard_constraints:
        fig="ablation_(?:bias|sampling|selection|rank|peft|stages)|importance_vs_accuracy|grad_interference|all_stitches_.+",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/plot.py"
