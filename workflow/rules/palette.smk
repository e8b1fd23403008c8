# The palette: what a user deploys (spec §12). Per run: one folder with the task tensors, the stitch
# table and the anchors by sha256 (esta.palette), built without latency (palette_unprofiled); then
# palette_latency loads it as a user would (esta.profile: the served path, shared adapters merged),
# times every deployed stitch on this machine and writes the final folder with its latency columns.
# Across runs: results/tables/latency.csv and results/tables/storage.csv.
SCHEMAS = ["esta/palette.schema.json"]
PALETTE_CODE = code(
    "palette", "vit/palette", "vit/build", "vit/data", "vit/metrics", "__main__"
)
PALETTE_SCHEMAS = SCHEMAS + ["esta/vit/palette.schema.json"]
LLM_PALETTE_CODE = code("palette", "llm/palette", "__main__") + LLM_CODE
LLM_PALETTE_SCHEMAS = SCHEMAS + ["esta/llm/palette.schema.json"]
# a dense run's palette (task dense/<name>, kind seg, esta.vit.seg_palette): the same two rules
SEG_PALETTE_CODE = code(
    "palette", "vit/seg_palette", "vit/seg", "vit/seg_results", "vit/build", "__main__"
)
SEG_PALETTE_SCHEMAS = SCHEMAS + ["esta/vit/seg_palette.schema.json"]
# palette_family: the entry point knows the families
PROFILE_CODE = code("profile", "__main__")


# the runs of the default variant the tables cover (their wildcards, in the order of the inputs)
PALETTE_RUNS = [
    dict(family=config["family"], method=m, variant="default", task=t, seed=s)
    for m in METHODS
    for t in config["tasks"]
    for s in config["seeds"]
]
LLM_PALETTE_RUNS = [
    dict(family="llm", method="esta", variant="default", task="llm", seed=s)
    for s in (config["seeds"] if LLM["enabled"] else [])
]


rule palette_latency:
    """Every deployed stitch of a run's palette timed on this machine, batch 1 and 32, through the
    served path (esta.profile, as `python -m esta profile` does); the palette with its latency columns.
    """
    input:
        palette=f"{R}/{{method}}/{{variant}}/{{task}}/palette_unprofiled/seed{{seed}}",
        schemas=per_kind(PALETTE_SCHEMAS, SEG_PALETTE_SCHEMAS),
        code=per_kind(PALETTE_CODE + PROFILE_CODE, SEG_PALETTE_CODE + PROFILE_CODE),
    output:
        palette=directory(f"{R}/{{method}}/{{variant}}/{{task}}/palette/seed{{seed}}"),
        latency=f"{R}/{{method}}/{{variant}}/{{task}}/seed{{seed}}/latency.csv",
    log:
        f"{R}/logs/palette_latency/{{method}}/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/palette_latency/{{method}}/{{variant}}/{{task}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        latency=config["palette"]["latency"],
    script:
        "../scripts/palette_latency.py"


rule palette:
    """One task's palette before its latency is measured: task tensors, stitch table, classes and
    transform, anchors by sha256."""
    input:
        unpack(model_inputs),
        unpack(palette_inputs),
        schemas=per_kind(PALETTE_SCHEMAS, SEG_PALETTE_SCHEMAS),
        code=per_kind(PALETTE_CODE, SEG_PALETTE_CODE),
    output:
        temp(
            directory(
                f"{R}/{{method}}/{{variant}}/{{task}}/palette_unprofiled/seed{{seed}}"
            )
        ),
    log:
        f"{R}/logs/palette/{{method}}/{{variant}}/{{task}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/palette/{{method}}/{{variant}}/{{task}}/seed{{seed}}.tsv"
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
        bundle=config["palette"]["bundle"],
        kind=per_kind("vit", "seg"),
        dense=dense_slice,
    script:
        "../scripts/palette_build.py"


rule llm_palette_latency:
    """Every deployed Stitched LLaMA stitch of the palette timed on this machine (a prefill of seq_len
    tokens at batch 1 and 32, esta.profile); the palette with its latency columns."""
    input:
        palette=f"{L}/esta/{{variant}}/seed{{seed}}/palette_unprofiled",
        schemas=LLM_PALETTE_SCHEMAS,
        code=LLM_PALETTE_CODE + PROFILE_CODE,
    output:
        palette=directory(f"{L}/esta/{{variant}}/seed{{seed}}/palette"),
        latency=f"{L}/esta/{{variant}}/seed{{seed}}/latency.csv",
    log:
        f"{R}/logs/llm_palette_latency/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_palette_latency/{{variant}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        latency=config["palette"]["latency"],
    script:
        "../scripts/palette_latency.py"


rule llm_palette:
    """The Stitched LLaMA palette of a run before its latency is measured: task tensors, stitch table,
    tokenizer, anchors by sha256."""
    input:
        model=f"{L}/esta/{{variant}}/seed{{seed}}/model.safetensors",
        stitch=f"{L}/stitch_init.safetensors",
        deployed=f"{L}/esta/{{variant}}/seed{{seed}}/deployed.csv",
        metrics=f"{L}/esta/{{variant}}/seed{{seed}}/metrics.csv",
        stitches=f"{R}/tables/llm_stitches.csv",
        tokenizer=f"{L}/data/tokenizer",
        schemas=LLM_PALETTE_SCHEMAS,
        code=LLM_PALETTE_CODE,
    output:
        temp(directory(f"{L}/esta/{{variant}}/seed{{seed}}/palette_unprofiled")),
    log:
        f"{R}/logs/llm_palette/{{variant}}/seed{{seed}}.log",
    benchmark:
        f"{R}/benchmarks/llm_palette/{{variant}}/seed{{seed}}.tsv"
    conda:
        "../envs/esta.yaml"
    threads: heavy_threads()
    params:
        torch_threads=config["threads"],
        folders=LLM_FOLDERS,
        dtype=LLM["dtype"],
        stitch_rule=LLM["rule"],
        pst=llm_pst,
        bundle=config["palette"]["bundle"],
        kind="llm",
    script:
        "../scripts/palette_build.py"


rule latency_table:
    """Every deployed stitch's latency of the default variant's runs, as one table."""
    input:
        latency=[
            f"{R}/{r['method']}/{r['variant']}/{r['task']}/seed{r['seed']}/latency.csv"
            for r in PALETTE_RUNS
        ]
        + [f"{L}/esta/default/seed{r['seed']}/latency.csv" for r in LLM_PALETTE_RUNS],
    output:
        f"{R}/tables/latency.csv",
    log:
        f"{R}/logs/latency_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        runs=PALETTE_RUNS + LLM_PALETTE_RUNS,
    script:
        "../scripts/latency_table.py"


rule storage_table:
    """Bytes per task of each method's palette, standalone exports and shared anchors: this run's
    files, and ViT-Ti/S/B at the paper's shape counted on the meta device (the paper's claim).
    """
    input:
        palettes=[
            f"{R}/{r['method']}/{r['variant']}/{r['task']}/palette/seed{r['seed']}"
            for r in PALETTE_RUNS
        ]
        + [f"{L}/esta/default/seed{r['seed']}/palette" for r in LLM_PALETTE_RUNS],
        exports=[
            f"{R}/{r['method']}/{r['variant']}/{r['task']}/deployed/seed{r['seed']}"
            for r in PALETTE_RUNS
        ]
        + [f"{L}/esta/default/seed{r['seed']}/deployed" for r in LLM_PALETTE_RUNS],
        anchors=anchor_files,
        # the LLM anchors' folders are params (as in the LLM rules): a user's own folders are no job's
        llm_check=[f"{L}/anchors/check.json"] if LLM["enabled"] else [],
        code=code("palette", "vit/palette", "vit/info"),
        schemas=SCHEMAS,
    output:
        f"{R}/tables/storage.csv",
    log:
        f"{R}/logs/storage_table.log",
    conda:
        "../envs/esta.yaml"
    params:
        runs=PALETTE_RUNS + LLM_PALETTE_RUNS,
        llm_anchors=LLM_FOLDERS if LLM["enabled"] else [],
        paper=dict(family_name="vit-ti-s-b", num_classes=100, rank=8),
    script:
        "../scripts/storage_table.py"
