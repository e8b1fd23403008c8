rule resolve_config:
    output:
        f"{R}/config.resolved.yaml",
    log:
        f"{R}/logs/resolve_config.log",
    conda:
        "../envs/esta.yaml"
    params:
        config=config,
    script:
        "../scripts/resolve_config.py"


rule prepare_data:
    input:
        code=code("vit/data", "vit/tasks", "vit/embedded"),
    output:
        f"{R}/data/{{task}}/manifest.json",
    log:
        f"{R}/logs/prepare_data/{{task}}.log",
    wildcard_constraints:
        task="embedded/[A-Za-z0-9_]+",
    conda:
        "../envs/esta.yaml"
    params:
        # only what rendering reads: data.normalize or num_workers must not re-render the suite
        data={k: config["data"][k] for k in ("seed", "n_train", "n_val", "n_test")},
        folder=lambda w, output: os.path.dirname(output[0]),
    script:
        "../scripts/prepare_data.py"


REGISTER_CODE = code("vit/data", "vit/tasks", "vit/build")


rule dense_render:
    """The embedded dense task, rendered in ADE20K's layout (esta.vit.seg_data.write_dense_task)."""
    output:
        directory(f"{R}/data/{{task}}/scenes"),
    log:
        f"{R}/logs/dense_render/{{task}}.log",
    wildcard_constraints:
        task="dense/[a-z0-9_]+",
    conda:
        "../envs/esta.yaml"
    params:
        render=DENSE["render"],
    script:
        "../scripts/dense_render.py"


rule register_data:
    """Check an external task whole and describe it in a manifest: a folder under data_root, a data
    set of your own (custom/<name>, config datasets; spec §13), or a dense task (dense/<name>, spec §14).
    No file input but a rendered dense task: the paths are params, so the DAG plans without the data;
    changed files rerun it.
    """
    input:
        # a dense task (dense/<name>, ADE20K layout, esta.vit.seg_jobs.register): the embedded one rendered first
        folder=per_kind([], dense_render_folder),
        code=per_kind(REGISTER_CODE, code("vit/seg_jobs", "vit/seg_data")),
    output:
        f"{R}/data/{{task}}/manifest.json",
    log:
        f"{R}/logs/register_data/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/register_data/{{task}}.tsv"
    wildcard_constraints:
        task=f"(?:{SUITES.removeprefix('embedded|')})/[A-Za-z0-9_]+|cifar100",
    conda:
        "../envs/esta.yaml"
    params:
        data_root=config["data_root"],
        dataset=lambda w: dataset_entry(w.task),
        fingerprint=data_fingerprint,
    script:
        "../scripts/register_data.py"


rule prepare_upstream:
    input:
        code=code("vit/data", "vit/tasks", "vit/embedded", "vit/upstream"),
    output:
        f"{R}/data/upstream/manifest.json",
    log:
        f"{R}/logs/prepare_upstream.log",
    conda:
        "../envs/esta.yaml"
    params:
        # only what rendering reads: the pretraining schedule must not re-render the set
        pretrain={
            k: config["anchors"]["pretrain"][k]
            for k in ("upstream", "n_classes", "n_per_class", "n_val_per_class")
        },
        seed=config["data"]["seed"],
        folder=lambda w, output: os.path.dirname(output[0]),
    script:
        "../scripts/prepare_upstream.py"
