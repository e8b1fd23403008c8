rule pretrain_anchor:
    """Pretrain one anchor of the embedded family on the synthetic upstream set."""
    input:
        data=f"{R}/data/upstream/manifest.json",
        code=code(
            "vit/anchors",
            "vit/stitch",
            "vit/tuning",
            "sampling",
            "train",
            "vit/evaluate",
            "vit/build",
            "vit/data",
            "vit/tasks",
        ),
    output:
        weights=f"{R}/anchors/{{family}}/anchor{{i}}.safetensors",
        info=f"{R}/anchors/{{family}}/anchor{{i}}.json",
    log:
        f"{R}/logs/pretrain_anchor/{{family}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/pretrain_anchor/{{family}}/anchor{{i}}.tsv"
    wildcard_constraints:
        family="embedded",
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=lambda w: w.family,
        img_size=config["data"]["img_size"],
        train={
            k: config["anchors"]["pretrain"][k]
            for k in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs")
        },
        num_workers=config["data"]["num_workers"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        device=config["device"],
        checkpoint_every_s=config["checkpoint_every_s"],
        ckpt_dir=lambda w: f"{R}/.checkpoints/anchors/{w.family}/anchor{w.i}",
    script:
        "../scripts/train_anchor.py"


rule register_weights:
    """Load one local pretrained weight file into its timm architecture and store it as an anchor
    (no file input: weights_root is a param; a changed file reruns it)."""
    input:
        code=code("vit/anchors", "vit/build", "vit/timm_family"),
    output:
        weights=f"{R}/anchors/{{family}}/anchor{{i}}.safetensors",
        info=f"{R}/anchors/{{family}}/anchor{{i}}.json",
    log:
        f"{R}/logs/register_weights/{{family}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/register_weights/{{family}}/anchor{{i}}.tsv"
    wildcard_constraints:
        family="(?!embedded/)[A-Za-z0-9_-]+",
    conda:
        "../envs/esta.yaml"
    params:
        family=FAMILY,
        img_size=config["data"]["img_size"],
        weights_root=config["weights_root"],
        file=weights_file,
        fingerprint=weights_fingerprint,
    script:
        "../scripts/register_weights.py"


rule anchors_table:
    input:
        expand(f"{R}/anchors/{config['family']}/anchor{{i}}.json", i=ANCHORS),
    output:
        f"{R}/tables/anchors.csv",
    log:
        f"{R}/logs/anchors_table.log",
    conda:
        "../envs/esta.yaml"
    script:
        "../scripts/anchors_table.py"


rule stitch_table:
    input:
        # the first task's class count sizes the table's head (custom tasks: from their manifest);
        # ancient: re-registered data must not rerun every job that reads the table
        head=ancient(f"{R}/data/{config['tasks'][0]}/manifest.json"),
        code=code(
            "vit/anchors",
            "vit/stitch",
            "vit/info",
            "vit/tuning",
            "vit/metrics",
            "vit/timm_family",
        ),
    output:
        f"{R}/tables/stitches.csv",
    log:
        f"{R}/logs/stitch_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        family=FAMILY,
        img_size=config["data"]["img_size"],
        tasks=config["tasks"],
    script:
        "../scripts/stitch_table.py"


LS_INIT_CODE = code(
    "vit/anchors",
    "vit/stitch",
    "vit/build",
    "vit/data",
    "vit/tasks",
    "vit/tuning",
    "vit/adapters",
    "vit/stages",
)


rule ls_init:
    """Least-squares init of the stitching layers (spec §4) on the anchors the method stitches:
    pretrained (ESTA), adapted fully (SN-Net), or adapted alone by PST (three-stage ESTA).
    """
    input:
        anchors=ls_init_anchors,
        adapted=adapted_anchor_states,
        data=f"{R}/data/{{task}}/manifest.json",
        code=per_kind(LS_INIT_CODE, DENSE_CODE),
    output:
        f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{mode}}/stitch_init.safetensors",
    log:
        f"{R}/logs/ls_init/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{mode}}.log",
    benchmark:
        f"{R}/benchmarks/ls_init/{{method}}/{{variant}}/{{task}}/seed{{seed}}/{{mode}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        family=FAMILY,
        n_images=config["ls_init"]["n_images"],
        method=lambda w: (
            method_config(w.variant)["esta"] if w.method == "esta" else None
        ),
        img_size=config["data"]["img_size"],
        normalize=config["data"]["normalize"],
        fgvc_interpolation=config["data"]["fgvc_interpolation"],
        dense=dense_slice,
    script:
        "../scripts/ls_init.py"


rule install_shipped_anchor:
    """Install one anchor shipped in the package (esta/vit/assets/<family>/, pretrained at length by
    config/upstream.yaml) as the run's anchor, checked against the folder's manifest."""
    input:
        weights=f"{SHIPPED}/{{family}}/anchor{{i}}.safetensors",
        info=f"{SHIPPED}/{{family}}/anchor{{i}}.json",
        manifest=f"{SHIPPED}/{{family}}/manifest.json",
        code=code("vit/shipped", "vit/build"),
    output:
        weights=f"{R}/anchors/{{family}}/anchor{{i}}.safetensors",
        info=f"{R}/anchors/{{family}}/anchor{{i}}.json",
    log:
        f"{R}/logs/install_shipped_anchor/{{family}}/anchor{{i}}.log",
    benchmark:
        f"{R}/benchmarks/install_shipped_anchor/{{family}}/anchor{{i}}.tsv"
    wildcard_constraints:
        family="embedded",
    conda:
        "../envs/esta.yaml"
    params:
        folder=lambda w: f"{SHIPPED}/{w.family}",
    script:
        "../scripts/install_shipped_anchor.py"


# Both rules write the embedded anchors; anchors.source picks which one runs.
if config["anchors"]["source"] == "shipped":

    ruleorder: install_shipped_anchor > pretrain_anchor

else:

    ruleorder: pretrain_anchor > install_shipped_anchor


if config["anchors"]["source"] == "pretrain":

    rule ship_anchors:
        """Store the pretrained family in the package with a manifest (sha256, command, recipe,
        accuracies): run with config/upstream.yaml, then commit esta/vit/assets/."""
        input:
            weights=expand(
                f"{R}/anchors/{config['family']}/anchor{{i}}.safetensors", i=ANCHORS
            ),
            info=expand(f"{R}/anchors/{config['family']}/anchor{{i}}.json", i=ANCHORS),
            code=code("vit/shipped", "vit/build"),
        output:
            f"{SHIPPED}/{config['family']}/manifest.json",
        log:
            f"{R}/logs/ship_anchors.log",
        conda:
            "../envs/esta.yaml"
        params:
            family=FAMILY,
            recipe=config["anchors"]["pretrain"],
            command=SHIP_COMMAND,
        script:
            "../scripts/ship_anchors.py"
