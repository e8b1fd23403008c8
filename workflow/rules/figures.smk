rule pareto_table:
    """Suite average per FLOPs interval (spec §9) and the tidy table of every deployed stitch."""
    input:
        metrics=expand(
            f"{R}/{{method}}/default/{{task}}/metrics.csv",
            method=METHODS,
            task=config["tasks"],
        ),
    output:
        pareto=f"{R}/tables/pareto_all.csv",
        tasks=f"{R}/tables/pareto_tasks.csv",
        deployed=f"{R}/tables/deployed.csv",
    log:
        f"{R}/logs/pareto_table.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/pareto_table.py"


rule pareto_task_tables:
    """Each task's deployed curves with the anchors trained alone (pretrained, from scratch) beside them."""
    input:
        tasks=f"{R}/tables/pareto_tasks.csv",
        controls=f"{R}/tables/anchors_alone.csv",
    output:
        per_task=expand(
            f"{R}/tables/pareto_{{slug}}.csv", slug=[slug(t) for t in config["tasks"]]
        ),
    log:
        f"{R}/logs/pareto_task_tables.log",
    conda:
        "../envs/esta.yaml"
    params:
        tasks=config["tasks"],
    script:
        "../scripts/pareto_task_tables.py"


rule plot_pareto_all:
    input:
        table=f"{R}/tables/pareto_all.csv",
    output:
        pdf=report(
            f"{R}/figures/pareto_all.pdf",
            caption="../report/pareto_all.rst",
            category="Pareto",
        ),
        png=f"{R}/figures/pareto_all.png",
    log:
        f"{R}/logs/plot_pareto_all.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/plot.py"


rule plot_pareto_task:
    input:
        table=f"{R}/tables/pareto_{{slug}}.csv",
    output:
        pdf=report(
            f"{R}/figures/pareto_{{slug}}.pdf",
            caption="../report/pareto_task.rst",
            category="Pareto",
            subcategory="{slug}",
        ),
        png=f"{R}/figures/pareto_{{slug}}.png",
    log:
        f"{R}/logs/plot_pareto/{{slug}}.log",
    wildcard_constraints:
        slug="(?:embedded|vtab|fgvc|custom)-[A-Za-z0-9_]+|cifar100",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/plot.py"


rule merge_benchmarks:
    """Run time and memory of every heavy job as one table: runtime is a result."""
    input:
        benchmark_files(),
    output:
        f"{R}/tables/benchmarks.csv",
    log:
        f"{R}/logs/merge_benchmarks.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/merge_benchmarks.py"


rule all_stitches_table:
    """One task's whole palette: every stitch's test accuracy for both methods, deployed ones marked."""
    input:
        test=lambda w: expand(
            f"{R}/{{method}}/default/{task_of(w.slug)}/seed{{seed}}/tuning/stitch_accuracy_test.csv",
            method=METHODS,
            seed=config["seeds"],
        ),
        deployed=lambda w: expand(
            f"{R}/{{method}}/default/{task_of(w.slug)}/seed{{seed}}/tuning/deployed.csv",
            method=METHODS,
            seed=config["seeds"],
        ),
        stitches=f"{R}/tables/stitches.csv",
        code=code("pareto"),
    output:
        f"{R}/tables/all_stitches_{{slug}}.csv",
    log:
        f"{R}/logs/all_stitches_table/{{slug}}.log",
    wildcard_constraints:
        slug="(?:embedded|vtab|fgvc|custom)-[A-Za-z0-9_]+|cifar100",
    conda:
        "../envs/esta.yaml"
    params:
        task=lambda w: task_of(w.slug),
        runs=[(m, s) for m in METHODS for s in config["seeds"]],
    script:
        "../scripts/all_stitches_table.py"
