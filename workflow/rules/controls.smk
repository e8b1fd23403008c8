rule anchors_alone_table:
    """Reference runs beside the stitched palettes: each anchor fully fine-tuned alone from its
    pretrained weights (SN-Net's `adapt`) and from scratch (the control: the anchors
    `controls.scratch` names), on the test split.
    """
    input:
        runs=[
            f"{R}/{method}/default/{task}/seed{seed}/{eval_mode()}/adapt/anchor{i}.json"
            for method, anchors in (("snnet", ANCHORS), ("scratch", SCRATCH_ANCHORS))
            for task in config["tasks"]
            for seed in config["seeds"]
            for i in anchors
        ],
        stitches=f"{R}/tables/stitches.csv",
        data=expand(f"{R}/data/{{task}}/manifest.json", task=config["tasks"]),
        code=code("vit/metrics", "vit/tasks"),
    output:
        f"{R}/tables/anchors_alone.csv",
    log:
        f"{R}/logs/anchors_alone_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        groups={t: task_group(t, config["datasets"]) for t in config["tasks"]},
    script:
        "../scripts/anchors_alone_table.py"


rule visits_table:
    """Training visits of every stitch against its cost, per method, and the fewest visits of a
    deployed stitch: is every deployed stitch trained enough?"""
    input:
        logs=expand(
            f"{R}/{{method}}/default/{{task}}/seed{{seed}}/tuning/train_log.csv",
            method=METHODS,
            task=config["tasks"],
            seed=config["seeds"],
        ),
        deployed=f"{R}/tables/deployed.csv",
        stitches=f"{R}/tables/stitches.csv",
        code=code("analysis"),
    output:
        f"{R}/tables/visits.csv",
    log:
        f"{R}/logs/visits_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        runs=[
            (m, t, s)
            for m in METHODS
            for t in config["tasks"]
            for s in config["seeds"]
        ],
    script:
        "../scripts/visits_table.py"


rule plot_visits:
    input:
        table=f"{R}/tables/visits.csv",
    output:
        pdf=report(
            f"{R}/figures/visits.pdf",
            caption="../report/analysis.rst",
            category="Analysis",
        ),
        png=f"{R}/figures/visits.png",
    log:
        f"{R}/logs/plot_visits.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/plot.py"
