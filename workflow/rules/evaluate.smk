EVALUATE_CODE = code("vit/evaluate", "vit/build", "vit/data", "vit/tasks")


rule evaluate_stitches:
    """Accuracy of every stitch of a tuning-mode model on the selection or the test split (SN-Net's
    `deploy` step; for ESTA only the selection ablation and the importance analysis); on a dense task
    mIoU and pixel accuracy (esta.vit.seg_jobs.evaluate_split), which the tables and palettes read.
    """
    input:
        unpack(trained_model("tuning")),
        data=f"{R}/data/{{task}}/manifest.json",
        code=per_kind(EVALUATE_CODE, DENSE_CODE),
    output:
        f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/tuning/stitch_accuracy_{{split}}.csv",
    log:
        f"{R}/logs/evaluate_stitches/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{split}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_stitches/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{split}}.tsv"
    wildcard_constraints:
        split="selection|test",
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: model_config(w.variant),
        img_size=config["data"]["img_size"],
        batch_size=config["eval"]["batch_size"],
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
        dense=dense_slice,
    script:
        "../scripts/evaluate_stitches.py"


rule evaluate_deployed:
    """Test accuracy of every deployed stitch (ids chosen in tuning mode)."""
    input:
        unpack(model_inputs),
        deployed=f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/tuning/deployed.csv",
        data=f"{R}/data/{{task}}/manifest.json",
        code=code("vit/evaluate", "vit/build", "vit/data", "vit/tasks"),
    output:
        f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/test_accuracy.csv",
    log:
        f"{R}/logs/evaluate_deployed/{{method}}/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate_deployed/{{method}}/{{variant}}/{{task}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: method_config(w.variant),
        img_size=config["data"]["img_size"],
        batch_size=config["eval"]["batch_size"],
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
    script:
        "../scripts/evaluate_deployed.py"


rule export_deployed:
    """Each deployed stitch as a standalone model: LoRA merged, biases baked in (safetensors + JSON)."""
    input:
        unpack(model_inputs),
        accuracy=f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/test_accuracy.csv",
        data=f"{R}/data/{{task}}/manifest.json",
        code=code("vit/export", "vit/build", "vit/data", "vit/tasks"),
    output:
        directory(f"{R}/{{method}}/{{variant}}/{{task}}/deployed/seed{{seed}}"),
    log:
        f"{R}/logs/export_deployed/{{method}}/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/export_deployed/{{method}}/{{variant}}/{{task}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: method_config(w.variant),
        img_size=config["data"]["img_size"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        mode=eval_mode(),
    script:
        "../scripts/export_deployed.py"


rule task_metrics:
    """Tidy per-task table: every deployed stitch of every seed with FLOPs, params and accuracy."""
    input:
        accuracy=expand(
            f"{R}/{{{{method}}}}/{{{{variant}}}}/{{{{task}}}}/seed{{seed}}/test_accuracy.csv",
            seed=config["seeds"],
        ),
        train=expand(
            f"{R}/{{{{method}}}}/{{{{variant}}}}/{{{{task}}}}/seed{{seed}}/tuning/train.json",
            seed=config["seeds"],
        ),
        # the run whose model gave test_accuracy (final mode with retrain_final)
        eval_train=expand(
            f"{R}/{{{{method}}}}/{{{{variant}}}}/{{{{task}}}}/seed{{seed}}/{eval_mode()}/train.json",
            seed=config["seeds"],
        ),
        stitches=f"{R}/tables/stitches.csv",
        data=f"{R}/data/{{task}}/manifest.json",
        code=code("vit/metrics", "vit/tasks", "vit/info"),
    output:
        f"{R}/{{method}}/{{variant}}/{{task}}/metrics.csv",
    log:
        f"{R}/logs/task_metrics/{{method}}/{{variant}}/{{task}}.log",
    conda:
        "../envs/esta.yaml"
    params:
        seeds=config["seeds"],
        retrain_final=config["retrain_final"],
        group=lambda w: task_group(w.task, config["datasets"]),
    script:
        "../scripts/task_metrics.py"
