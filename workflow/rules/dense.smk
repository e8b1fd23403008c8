# Dense prediction (spec §14, the ESTA paper's open question 1): ESTA and SN-Net with a SETR-naive head
# per end anchor on segmentation tasks in ADE20K's layout (esta.vit.seg). Its runs are the classification
# rules' on task dense/<name> (rules/dense_common.smk); here only the tables and figures that compare them.
# Targets: dense_targets() (rule all when dense.enabled).


# the dense figures have their own plot script (mIoU, not top-1); figures.smk's generic `plot` matches them too
ruleorder: dense_plot > plot


rule dense_tables:
    """Deployed stitches over seeds (pareto_dense), every stitch per task, and the summary."""
    input:
        deployed=dense_runs("deployed.csv"),
        selection=dense_runs("stitch_accuracy_selection.csv"),
        test=dense_runs("stitch_accuracy_test.csv"),
        info=dense_runs("train.json"),
        adapt=dense_adapt_infos(),
        code=code("vit/seg_results", "vit/seg_tables"),
    output:
        pareto=f"{R}/tables/pareto_dense.csv",
        summary=f"{R}/tables/dense_summary.csv",
        all_stitches=expand(
            f"{R}/tables/all_stitches_dense_{{t}}.csv", t=DENSE["tasks"]
        ),
    log:
        f"{R}/logs/dense_tables.log",
    conda:
        "../envs/esta.yaml"
    params:
        tasks=DENSE["tasks"],
    script:
        "../scripts/dense_tables.py"


rule dense_plot:
    """pareto_dense and the all-stitch figure of a dense task, from their CSV twins."""
    input:
        table=lambda w: f"{R}/tables/{w.name}.csv",
    output:
        pdf=f"{R}/figures/{{name}}.pdf",
        png=f"{R}/figures/{{name}}.png",
    log:
        f"{R}/logs/dense_plot/{{name}}.log",
    wildcard_constraints:
        name="pareto_dense|all_stitches_dense_[a-z0-9_]+",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/dense_plot.py"
