TRAIN_CODE = code(
    "vit/anchors",
    "vit/stitch",
    "vit/tuning",
    "sampling",
    "train",
    "vit/build",
    "vit/data",
    "vit/tasks",
    "vit/adapters",
    "vit/stages",
    "pareto",
)


rule esta_adapt_anchor:
    """Three-stage ESTA (`esta.stages: three`), stage 1: PST adapts one anchor alone on the task, with
    the variant's PEFT and training recipe (esta.vit.stages)."""
    input:
        anchor=lambda w: f"{R}/anchors/{config['family']}/anchor{w.i}.safetensors",
        data=f"{R}/data/{{task}}/manifest.json",
        code=TRAIN_CODE,
    output:
        state=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/stage1/anchor{{i}}.safetensors",
        info=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/stage1/anchor{{i}}.json",
    log:
        f"{R}/logs/esta_adapt_anchor/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/esta_adapt_anchor/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/anchor{{i}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: method_config(w.variant)["esta"],
        train=lambda w: method_config(w.variant)["esta"]["train"],
        img_size=config["data"]["img_size"],
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/esta/{w.variant}/{w.task}/seed{w.seed}/{w.mode}/stage1_{w.i}",
    script:
        "../scripts/train_anchor.py"


rule train_esta:
    """ESTA: PST over every stitch, importance sampling (spec §5-§6); a three-stage variant starts
    from its anchors adapted alone (`adapted`, stage 1) and its stitching layers fitted on them.
    """
    input:
        anchors=anchor_files,
        stitch=esta_stitch_init(),
        adapted=adapted_anchor_states,
        data=f"{R}/data/{{task}}/manifest.json",
        stitches=per_kind(f"{R}/tables/stitches.csv", []),
        code=per_kind(TRAIN_CODE, DENSE_CODE),
    output:
        model=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/model.safetensors",
        history=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/train_log.csv",
        stats=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/importance.csv",
        info=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/train.json",
        snapshots=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/snapshots.safetensors",
    log:
        f"{R}/logs/train_esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}.log",
    benchmark:
        f"{R}/benchmarks/train_esta/{{variant}}/{{task}}/seed{{seed}}/{{mode}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        method=lambda w: method_config(w.variant)["esta"],
        train=per_kind(
            lambda w: method_config(w.variant)["esta"]["train"], DENSE["esta"]["train"]
        ),
        sampler=lambda w: method_config(w.variant)["esta"]["sampler"],
        intervals=lambda w: method_config(w.variant)["deploy"]["intervals"],
        loss_window=lambda w: method_config(w.variant)["deploy"]["loss"],
        img_size=config["data"]["img_size"],
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/esta/{w.variant}/{w.task}/seed{w.seed}/{w.mode}",
        dense=dense_slice,
    script:
        "../scripts/train.py"


rule select_esta:
    """One-stage deployment (spec §6): per FLOPs interval the stitch of best `deploy.score`
    (esta.scores): importance or loss from training, loss_batch from a forward pass on fixed
    training images, evaluate from the selection split."""
    input:
        unpack(select_inputs),
    output:
        deployed=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/deployed.csv",
        scores=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/scores.csv",
    log:
        f"{R}/logs/select_esta/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/select_esta/{{variant}}/{{task}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        deploy=per_kind(lambda w: method_config(w.variant)["deploy"], DENSE["deploy"]),
        score=selection_score,
        refresh=selection_refresh,
        method=lambda w: method_config(w.variant)["esta"],
        img_size=config["data"]["img_size"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        eval_batch_size=config["eval"]["batch_size"],
        device=config["device"],
        dense=dense_slice,
    script:
        "../scripts/select_esta.py"


use rule select_esta as select_esta_by with:
    """The same deployment by each score, whatever the config says (`refreshed`: importance
    recomputed on one fixed training batch): the selection ablation compares them."""
    output:
        deployed=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/deployed_{{how}}.csv",
        scores=f"{R}/esta/{{variant}}/{{task}}/seed{{seed}}/tuning/scores_{{how}}.csv",
    log:
        f"{R}/logs/select_esta/{{variant}}/{{task}}/seed{{seed}}_{{how}}.log",
    benchmark:
        f"{R}/benchmarks/select_esta/{{variant}}/{{task}}/seed{{seed}}_{{how}}.tsv"
    wildcard_constraints:
        how="|".join(SELECTIONS),
