# Dense prediction (spec §14, the ESTA paper's open question 1): ESTA and SN-Net with a SETR-naive head
# per end anchor on segmentation tasks in ADE20K's layout (esta.vit.seg). The same method core as the
# classification rules (one training loop, LS init, the deployment scores); its own rules because the
# data, the head and the metric (mIoU) differ. Targets: dense_targets() (rule all when dense.enabled, rules/dense_common.smk).


wildcard_constraints:
    dtask="[a-z0-9_]+",


# the dense figures have their own plot script (mIoU, not top-1); figures.smk's generic `plot` matches them too
ruleorder: dense_plot > plot


rule dense_render:
    """The embedded dense task, rendered in ADE20K's layout (esta.vit.seg_data.write_dense_task)."""
    output:
        directory(f"{R}/dense/render/{{dtask}}"),
    log:
        f"{R}/logs/dense_render/{{dtask}}.log",
    conda:
        "../envs/esta.yaml"
    params:
        render=DENSE["render"],
    script:
        "../scripts/dense_render.py"


rule dense_register:
    """Check a dense task's folder whole (one error naming the file) and describe it in a manifest."""
    input:
        folder=lambda w: (
            [] if dense_task(w.dtask)["folder"] else f"{R}/dense/render/{w.dtask}"
        ),
        code=code("vit/seg_data"),
    output:
        f"{R}/dense/data/{{dtask}}/manifest.json",
    log:
        f"{R}/logs/dense_register/{{dtask}}.log",
    conda:
        "../envs/esta.yaml"
    params:
        data_root=config["data_root"],
    script:
        "../scripts/dense_register.py"


rule dense_adapt:
    """SN-Net step 1 on a dense task, and the anchors-alone reference: one anchor fully fine-tuned."""
    input:
        anchor=lambda w: f"{R}/anchors/{config['family']}/anchor{w.i}.safetensors",
        data=f"{R}/dense/data/{{dtask}}/manifest.json",
        code=DENSE_CODE,
    output:
        weights=f"{R}/dense/snnet/{{dtask}}/seed{{seed}}/adapt/anchor{{i}}.safetensors",
        info=f"{R}/dense/snnet/{{dtask}}/seed{{seed}}/adapt/anchor{{i}}.json",
    log:
        f"{R}/logs/dense_adapt/{{dtask}}/seed{{seed}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/dense_adapt/{{dtask}}/seed{{seed}}/anchor{{i}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        dense=DENSE,
        train=DENSE["snnet"]["adapt"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/dense/snnet/{w.dtask}/seed{w.seed}/adapt{w.i}",
    script:
        "../scripts/dense_adapt.py"


rule dense_ls_init:
    """Stitching layers by least squares on the anchors the method stitches (spec §4)."""
    input:
        anchors=dense_anchors,
        data=f"{R}/dense/data/{{dtask}}/manifest.json",
        code=DENSE_CODE,
    output:
        f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/stitch_init.safetensors",
    log:
        f"{R}/logs/dense_ls_init/{{method}}/{{dtask}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/dense_ls_init/{{method}}/{{dtask}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        dense=DENSE,
    script:
        "../scripts/dense_ls_init.py"


rule dense_train:
    """ESTA (PST, the configured sampler) or SN-Net's stitch step (all trains, uniform) on a dense task."""
    input:
        anchors=dense_anchors,
        stitch=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/stitch_init.safetensors",
        data=f"{R}/dense/data/{{dtask}}/manifest.json",
        code=DENSE_CODE,
    output:
        model=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/model.safetensors",
        history=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/train_log.csv",
        stats=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/importance.csv",
        info=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/train.json",
    log:
        f"{R}/logs/dense_train/{{method}}/{{dtask}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/dense_train/{{method}}/{{dtask}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        dense=DENSE,
        esta=method_config("default")["esta"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/dense/{w.method}/{w.dtask}/seed{w.seed}/train",
    script:
        "../scripts/dense_train.py"


rule dense_evaluate:
    """Every stitch's selection and test mIoU, and the deployed stitches of the method."""
    input:
        anchors=dense_anchors,
        stitch=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/stitch_init.safetensors",
        model=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/model.safetensors",
        stats=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/importance.csv",
        data=f"{R}/dense/data/{{dtask}}/manifest.json",
        code=DENSE_CODE,
    output:
        stitches=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/stitches.csv",
        deployed=f"{R}/dense/{{method}}/{{dtask}}/seed{{seed}}/deployed.csv",
    log:
        f"{R}/logs/dense_evaluate/{{method}}/{{dtask}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/dense_evaluate/{{method}}/{{dtask}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        dense=DENSE,
        esta=method_config("default")["esta"],
        device=config["device"],
    script:
        "../scripts/dense_evaluate.py"


rule dense_tables:
    """Deployed stitches over seeds (pareto_dense), every stitch per task, and the summary."""
    input:
        deployed=dense_runs("deployed.csv"),
        stitches=dense_runs("stitches.csv"),
        info=dense_runs("train.json"),
        adapt=dense_adapt_infos(),
        code=code("vit/seg_results"),
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
