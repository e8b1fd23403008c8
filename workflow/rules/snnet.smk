rule snnet_adapt:
    """SN-Net step 1: fine-tune one anchor fully on the task. With method `scratch` the same
    recipe trains the anchor from random init: the control that shows what pretraining is worth.
    """
    input:
        anchor=lambda w: (
            f"{R}/anchors/{config['family']}/anchor{w.i}.safetensors"
            if w.method == "snnet"
            else []
        ),
        data=f"{R}/data/{{task}}/manifest.json",
        code=per_kind(TRAIN_CODE, DENSE_CODE),
    output:
        weights=f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/adapt/anchor{{i}}.safetensors",
        info=f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/adapt/anchor{{i}}.json",
    log:
        f"{R}/logs/{{method}}_adapt/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/{{method}}_adapt/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/anchor{{i}}.tsv"
    wildcard_constraints:
        method="snnet|scratch",
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        train=per_kind(
            lambda w: method_config(w.variant)["snnet"]["adapt"],
            DENSE["snnet"]["adapt"],
        ),
        img_size=config["data"]["img_size"],
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/{w.method}/{w.variant}/{w.task}/seed{w.seed}/{w.mode}/adapt{w.i}",
        evaluate_test=True,
        dense=dense_slice,
    script:
        "../scripts/train_anchor.py"


rule snnet_stitch:
    """SN-Net step 2: stitch the adapted anchors and train everything, stitches drawn uniformly."""
    input:
        anchors=expand(
            f"{R}/snnet/{{{{variant}}}}/{{{{task}}}}/seed{{{{seed}}}}/{{{{mode}}}}/adapt/anchor{{i}}.safetensors",
            i=ANCHORS,
        ),
        stitch=f"{R}/snnet/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/stitch_init.safetensors",
        data=f"{R}/data/{{task}}/manifest.json",
        code=per_kind(TRAIN_CODE, DENSE_CODE),
    output:
        model=f"{R}/snnet/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/model.safetensors",
        history=f"{R}/snnet/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/train_log.csv",
        info=f"{R}/snnet/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/train.json",
    log:
        f"{R}/logs/snnet_stitch/{{variant}}/{{task}}/seed{{seed}}/{{mode}}.log",
    benchmark:
        f"{R}/benchmarks/snnet_stitch/{{variant}}/{{task}}/seed{{seed}}/{{mode}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: method_config(w.variant)["snnet"],
        train=per_kind(
            lambda w: method_config(w.variant)["snnet"]["stitch"],
            DENSE["snnet"]["train"],
        ),
        sampler={"kind": "uniform"},
        img_size=config["data"]["img_size"],
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/snnet/{w.variant}/{w.task}/seed{w.seed}/{w.mode}/stitch",
        dense=dense_slice,
    script:
        "../scripts/train.py"


rule snnet_deploy:
    """SN-Net step 3: per FLOPs interval, the stitch most accurate on the selection split."""
    input:
        unpack(snnet_deploy_inputs),
    output:
        f"{R}/snnet/{{variant}}/{{task}}/seed{{seed}}/tuning/deployed.csv",
    log:
        f"{R}/logs/snnet_deploy/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/snnet_deploy/{{variant}}/{{task}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    params:
        deploy=per_kind(lambda w: method_config(w.variant)["deploy"], DENSE["deploy"]),
    script:
        "../scripts/deploy_by_accuracy.py"
