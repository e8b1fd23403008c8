# Input functions of the vision pipeline (data, anchors, ESTA, SN-Net, tables): which files a job
# reads, by wildcard. Config checks and shared helpers are in rules/common.smk.


def ablation_inputs(w):
    """Per-task metrics of each compared variant; for `selection`, the default ESTA model's
    deployment by each score (SELECTIONS) and every stitch's test accuracy (the oracle's).
    """
    if w.name != "selection":
        return dict(
            metrics=expand(
                f"{R}/esta/{{variant}}/{{task}}/metrics.csv",
                variant=ABL[w.name],
                task=ABL["tasks"],
            )
        )
    run = f"{R}/esta/default/{{task}}/seed{{seed}}/tuning"
    kw = dict(task=config["tasks"], seed=config["seeds"])
    # run-major (SCORE_RUNS order), then SELECTIONS: the script takes each run's slice
    deployed = [
        f"{R}/esta/default/{t}/seed{s}/tuning/deployed_{h}.csv"
        for t, s in SCORE_RUNS
        for h in SELECTIONS
    ]
    return dict(
        deployed=deployed,
        test=expand(f"{run}/stitch_accuracy_test.csv", **kw),
        stitches=f"{R}/tables/stitches.csv",
        train=expand(f"{run}/train.json", **kw),
    )


# (task, seed) of the runs the score analyses read: every task, the default variant
SCORE_RUNS = [(t, s) for t in config["tasks"] for s in config["seeds"]]


def score_benchmarks(task, seed):
    """Per selection, the benchmark files of the jobs it needs beyond training."""
    B = f"{R}/benchmarks"
    job = f"default/{task}/seed{seed}"
    out = {h: [f"{B}/select_esta/{job}_{h}.tsv"] for h in SELECTIONS}
    out["evaluate"].append(f"{B}/evaluate_stitches/esta/{job}/selection.tsv")
    return out


def score_inputs(w):
    """Per run (SCORE_RUNS order, then SELECTIONS order): every score, deployment and benchmark of
    each selection, the test accuracy of every stitch, the statistics and history of training.
    """
    files = dict(
        scores=[], deployed=[], bench=[], test=[], stats=[], history=[], train=[]
    )
    for task, seed in SCORE_RUNS:
        run = f"{R}/esta/default/{task}/seed{seed}/tuning"
        files["scores"] += [f"{run}/scores_{h}.csv" for h in SELECTIONS]
        files["deployed"] += [f"{run}/deployed_{h}.csv" for h in SELECTIONS]
        files["bench"] += sum(score_benchmarks(task, seed).values(), [])
        files["test"].append(f"{run}/stitch_accuracy_test.csv")
        files["stats"].append(f"{run}/importance.csv")
        files["history"].append(f"{run}/train_log.csv")
        files["train"].append(f"{run}/train.json")
    return files


def stat_files(folder, depth=2):
    """(name, bytes, mtime) of the non-image files under `folder`, up to `depth` levels: a cheap
    fingerprint of a data set's list files, taken when the DAG is built."""
    if not os.path.isdir(folder):
        return f"missing: {folder}"
    out = []
    for here, dirs, files in os.walk(folder):
        rel = os.path.relpath(here, folder)
        if rel.count(os.sep) + 1 >= depth:
            dirs.clear()
        for f in sorted(files):
            if not f.lower().endswith((".jpg", ".jpeg", ".png")):
                st = os.stat(os.path.join(here, f))
                out.append((os.path.join(rel, f), st.st_size, int(st.st_mtime)))
    return sorted(out)


def data_fingerprint(w):
    """Changed list files of an external task, or an added, removed or renamed file of a custom data
    set (esta.vit.data.custom.fingerprint: no stat per image), change this param, which reruns
    register_data."""
    # both torch-free: importing esta.vit.data (torch) here was ~5 s of CPU per DAG build (issue 32)
    from esta.vit.fingerprint import fingerprint
    from esta.vit.tasks import task_info

    if is_custom(w.task):
        entry = dataset_entry(w.task)
        return fingerprint(entry["path"], stat_files=entry["source"] == "hf")
    folder = (
        dense_task(w.task[len("dense/") :])["folder"]
        if task_kind(w.task) == "seg"
        else task_info(w.task).folder
    )
    if folder is None:  # the rendered dense task: its folder is an input
        return "rendered"
    if config["data_root"] is None:
        return "data_root unset"
    return stat_files(os.path.join(config["data_root"], folder))


def weights_file(w):
    files = config["anchors"]["weights"]
    return None if files is None else files[int(w.i)]


def weights_fingerprint(w):
    """A changed weight file changes this param, which reruns register_weights."""
    if config["weights_root"] is None or weights_file(w) is None:
        return "weights unset"
    path = os.path.join(config["weights_root"], weights_file(w))
    if not os.path.isfile(path):
        return f"missing: {path}"
    st = os.stat(path)
    return [st.st_size, int(st.st_mtime)]


def anchor_files(wildcards):
    """Pretrained anchors (ESTA, SN-Net adapt) of the configured family."""
    return expand(f"{R}/anchors/{config['family']}/anchor{{i}}.safetensors", i=ANCHORS)


def ls_init_anchors(w):
    if w.method == "esta":
        return anchor_files(w)
    return expand(f"{run_dir(w)}/{w.mode}/adapt/anchor{{i}}.safetensors", i=ANCHORS)


def esta_stages(variant):
    return method_config(variant)["esta"]["stages"]


def esta_stitch_init(mode=None):
    """Input function: ESTA's LS-initialised stitching layers depend only on the pretrained anchors,
    the task and the seed, so every one-stage ESTA variant uses those of the default variant; a
    three-stage variant fits its own on its adapted anchors."""

    def inputs(w):
        m = mode or w.mode
        v = w.variant if esta_stages(w.variant) == "three" else "default"
        return f"{R}/esta/{v}/{w.task}/seed{w.seed}/{m}/stitch_init.safetensors"

    return inputs


def three_stage_costs():
    """cost_table's inputs for three-stage ESTA (the stages ablation's three-stage variants, on the
    ablation tasks): the benchmark of every job of its three steps, and the runs' train.json.
    """
    three = [v for v in ABL["stages"] if esta_stages(v) == "three"]
    B, run = f"{R}/benchmarks", "{variant}/{task}/seed{seed}"
    modes = sorted({"tuning", eval_mode()})
    kw = dict(variant=three, task=ABL["tasks"], seed=config["seeds"])
    bench = expand(
        f"{B}/esta_adapt_anchor/{run}/{{mode}}/anchor{{i}}.tsv",
        mode=modes,
        i=ANCHORS,
        **kw,
    )
    bench += expand(f"{B}/ls_init/esta/{run}/{{mode}}.tsv", mode=modes, **kw)
    bench += expand(f"{B}/train_esta/{run}/{{mode}}.tsv", mode=modes, **kw)
    bench += expand(f"{B}/select_esta/{run}.tsv", **kw)
    # the runs behind the reported accuracy (final mode with retrain_final)
    info = expand(f"{R}/esta/{run}/{eval_mode()}/train.json", **kw)
    adapt = expand(
        f"{R}/esta/{run}/{eval_mode()}/stage1/anchor{{i}}.json", i=ANCHORS, **kw
    )
    return dict(three_bench=bench, three_info=info, three_adapt_info=adapt)


def adapted_anchor_states(w):
    """Input function: stage 1 of a three-stage ESTA variant (each anchor adapted alone by PST);
    nothing for one-stage ESTA and for SN-Net."""
    if w.get("method", "esta") != "esta" or esta_stages(w.variant) != "three":
        return []
    return expand(
        f"{R}/esta/{w.variant}/{w.task}/seed{w.seed}/{w.mode}/stage1/anchor{{i}}.safetensors",
        i=ANCHORS,
    )


def trained_model(mode):
    """Input function: anchors, stitching layers and trained state of the `mode` model."""

    def inputs(w):
        m = (
            "tuning" if task_kind(w.task) == "seg" else mode
        )  # a dense run has no final mode
        d = f"{run_dir(w)}/{m}"
        if w.method == "esta":
            anchors = anchor_files(w)
            stitch = esta_stitch_init(m)(w)
        else:
            anchors = expand(f"{d}/adapt/anchor{{i}}.safetensors", i=ANCHORS)
            stitch = f"{d}/stitch_init.safetensors"
        return dict(
            anchors=anchors,
            stitch=stitch,
            model=f"{d}/model.safetensors",
        )

    return inputs


# the model whose test accuracy is reported (final mode when retrain_final)
model_inputs = trained_model(eval_mode())


def benchmark_files(variants=("default",)):
    """The benchmark file of every heavy job behind the default figures."""
    B = f"{R}/benchmarks"
    modes = sorted({"tuning", eval_mode()})
    run = "{variant}/{task}/seed{seed}"
    kw = dict(variant=variants, task=config["tasks"], seed=config["seeds"])
    anchor_step = {
        "pretrain": "pretrain_anchor",
        "shipped": "install_shipped_anchor",
        "files": "register_weights",
    }[config["anchors"]["source"]]
    files = expand(f"{B}/{anchor_step}/{config['family']}/anchor{{i}}.tsv", i=ANCHORS)
    files += expand(f"{B}/register_data/{{task}}.tsv", task=EXTERNAL)
    files += expand(
        f"{B}/ls_init/{{method}}/{run}/{{mode}}.tsv", method=METHODS, mode=modes, **kw
    )
    files += expand(f"{B}/train_esta/{run}/{{mode}}.tsv", mode=modes, **kw)
    files += expand(
        f"{B}/snnet_adapt/{run}/{{mode}}/anchor{{i}}.tsv", mode=modes, i=ANCHORS, **kw
    )
    files += expand(f"{B}/snnet_stitch/{run}/{{mode}}.tsv", mode=modes, **kw)
    files += expand(
        f"{B}/{{step}}/{run}.tsv", step=["select_esta", "snnet_deploy"], **kw
    )
    # what each deployment score costs (score_tables): its selection job, evaluate's pass over all stitches
    files += expand(f"{B}/select_esta/{run}_{{how}}.tsv", how=SELECTIONS, **kw)
    files += expand(
        f"{B}/evaluate_stitches/{{method}}/{run}/{{split}}.tsv",
        method=METHODS,
        split=["selection", "test"],
        **kw,
    )
    files += expand(
        f"{B}/{{step}}/{{method}}/{run}.tsv",
        step=["evaluate_deployed", "export_deployed", "palette", "palette_latency"],
        method=METHODS,
        **kw,
    )
    if config["llm"]["enabled"]:
        files += llm_benchmark_files()
    return files


# the deployments the selection ablation compares (`refreshed`: importance on one fixed batch)
SELECTIONS = ["importance", "refreshed", "loss", "loss_batch", "evaluate"]


def selection_score(w):
    """The score a select_esta job deploys by: the wildcard `how` of select_esta_by, else the
    variant's `deploy.score` (a dense task's: `dense.deploy.score`)."""
    how = w.get("how")
    if how is None and task_kind(w.task) == "seg":
        return config["dense"]["deploy"]["score"]
    if how is None:
        return method_config(w.variant)["deploy"]["score"]
    return "importance" if how == "refreshed" else how


def selection_refresh(w):
    how = w.get("how")
    if how is None and task_kind(w.task) == "seg":
        return False
    if how is None:
        deploy = method_config(w.variant)["deploy"]
        return deploy["score"] == "importance" and deploy["importance_refresh"]
    return how == "refreshed"


def select_inputs(w):
    """What a deployment reads: the training statistics and the stitch table always; the trained
    model and its task for a forward pass (loss_batch, refreshed importance); the selection-split
    accuracy of every stitch for `evaluate`."""
    run = f"{R}/esta/{w.variant}/{w.task}/seed{w.seed}/tuning"
    score = selection_score(w)
    if task_kind(w.task) == "seg":
        return dense_deploy_inputs(w, "esta", score)
    files = dict(
        stats=f"{run}/importance.csv",
        stitches=f"{R}/tables/stitches.csv",
        code=code("scores", "pareto"),
    )
    if score == "loss_batch" or selection_refresh(w):
        files.update(
            anchors=anchor_files(w),
            stitch=esta_stitch_init("tuning")(w),
            model=f"{run}/model.safetensors",
            data=f"{R}/data/{w.task}/manifest.json",
            code=code(
                "scores",
                "pareto",
                "sampling",
                "vit/build",
                "vit/data",
                "vit/tasks",
                "vit/evaluate",
            ),
        )
    if score == "evaluate":
        files["selection"] = f"{run}/stitch_accuracy_selection.csv"
    return files


def dense_deploy_inputs(w, method, score):
    """What a dense run's deployment reads (esta.vit.seg_jobs.deploy_run): every stitch's selection and
    test mIoU; ESTA its training statistics, and for loss_batch the trained model and its task.
    """
    run = f"{R}/{method}/{w.variant}/{w.task}/seed{w.seed}/tuning"
    files = dict(
        selection=f"{run}/stitch_accuracy_selection.csv",
        test=f"{run}/stitch_accuracy_test.csv",
        code=DENSE_CODE,
    )
    if method == "esta":
        files["stats"] = f"{run}/importance.csv"
    if score == "loss_batch":
        files.update(
            anchors=anchor_files(w),
            stitch=esta_stitch_init("tuning")(w),
            model=f"{run}/model.safetensors",
            data=f"{R}/data/{w.task}/manifest.json",
        )
    return files


def snnet_deploy_inputs(w):
    """SN-Net's deployment: the selection accuracy of every stitch and the stitch table; a dense run's
    split tables (dense_deploy_inputs)."""
    if task_kind(w.task) == "seg":
        return dense_deploy_inputs(w, "snnet", "evaluate")
    return dict(
        accuracy=f"{R}/snnet/{w.variant}/{w.task}/seed{w.seed}/tuning/stitch_accuracy_selection.csv",
        stitches=f"{R}/tables/stitches.csv",
        code=code("pareto"),
    )


def palette_inputs(w):
    """What a run's palette reads beyond its model (model_inputs): for a classification task the test
    accuracy of its deployed stitches and, where the palette's model is the tuning-mode one (retrain_final
    off), of every stitch, the selection accuracy where measured (palette_selection) and the stitch
    table; for a dense task every stitch's selection and test mIoU (evaluate_stitches).
    """
    run = run_dir(w)
    files = dict(
        deployed=f"{run}/tuning/deployed.csv", data=f"{R}/data/{w.task}/manifest.json"
    )
    if task_kind(w.task) == "seg":
        return dict(
            files,
            selection=f"{run}/tuning/stitch_accuracy_selection.csv",
            test=f"{run}/tuning/stitch_accuracy_test.csv",
        )
    files.update(
        accuracy=f"{run}/test_accuracy.csv", stitches=f"{R}/tables/stitches.csv"
    )
    if eval_mode() == "tuning":
        files["stitch_accuracy"] = f"{run}/tuning/stitch_accuracy_test.csv"
    return dict(files, **palette_selection(w))


def palette_selection(w):
    """Selection-split accuracy of every stitch, where the run measured it on the palette's own model
    (SN-Net's deploy step, ESTA's `evaluate` selection): the accuracy a budget chooses by.
    """
    if eval_mode() != "tuning":
        return {}
    if w.method == "snnet" or method_config(w.variant)["deploy"]["score"] == "evaluate":
        return dict(selection=f"{run_dir(w)}/tuning/stitch_accuracy_selection.csv")
    return {}
