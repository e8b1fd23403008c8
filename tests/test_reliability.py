"""Reliability: killed jobs resume to the same numbers, outputs are atomic, runs are deterministic,
checkpoints and weight files load without running pickled code, and bad inputs fail once, early and
naming the culprit.

The kill tests reuse the ``smoke`` session fixture: its ``data/`` and ``anchors/`` are copied into a
fresh working directory (nothing is pretrained again), the ESTA training job of ``embedded/digits``
is killed once it has written a checkpoint, and the rerun's ``metrics.csv`` must equal the smoke
run's (an independent, uninterrupted run) in every column but timings.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import yaml
from conftest import BIN, NUM_CLASSES, ROOT, make_anchors, make_images, make_workdir, snakemake
from torch.utils.data import TensorDataset

from esta.vit.tuning import TuningConfig, make_tunable
from esta.sampling import SamplerConfig, StitchSampler
from esta.vit.stitch import StitchedViT
from esta.train import TrainConfig, settings_hash, train

SMOKE = ROOT / "config" / "smoke.yaml"
TASK = "embedded/digits"
TARGET = f"results/esta/default/{TASK}/metrics.csv"
RUN = f"results/esta/default/{TASK}/seed0/tuning"  # train_esta's output folder
CKPT = f"results/.checkpoints/esta/default/{TASK}/seed0/tuning"
TRAIN_OUTPUTS = ["model.safetensors", "train.json", "importance.csv", "train_log.csv", "snapshots.safetensors"]
# Checkpoints every second (smoke.yaml: 5 s) so a checkpoint lands early in training however fast
# the machine is. It changes when the state is saved, not what is computed: the metrics must still
# equal the smoke run's.
FAST_CHECKPOINTS = {"checkpoint_every_s": 1}


def config_args(work: Path, override: dict | None = None) -> list[str]:
    """``--configfile smoke.yaml [override.yaml]``: later files are merged recursively over earlier ones."""
    files = [str(SMOKE)]
    if override is not None:
        path = work / "override.yaml"
        path.write_text(yaml.safe_dump(override))
        files.append(str(path))
    return ["--configfile", *files]


def smk_cmd(work: Path, *args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work), *args]


def without_timings(df: pd.DataFrame) -> pd.DataFrame:
    """Without the measured costs of a run: times and peak memory (which a resumed run may not share)."""
    return df.drop(columns=[c for c in df.columns if any(m in c.lower() for m in ("wall", "time", "rss"))])


def assert_same_metrics(a: Path, b: Path) -> None:
    """Equal in every column but timings and peak memory: exact for accuracies, ids, parameter
    counts and optimizer steps."""
    left, right = pd.read_csv(a), pd.read_csv(b)
    assert "train_wall_s" in left.columns and "test_accuracy" in left.columns  # the table we think it is
    pd.testing.assert_frame_equal(without_timings(left), without_timings(right), check_exact=True)


def planned_jobs(dry_run_stdout: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    jobs, table = {}, False
    for line in dry_run_stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            table = True
        elif table and len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
        elif table and parts and parts[0] == "total":
            break
    return jobs


def reasons(dry_run_stdout: str, rule: str) -> str:
    """The 'reason:' lines of a rule's jobs in a dry run (printed because of printshellcmds/-n)."""
    out, inside = [], False
    for line in dry_run_stdout.splitlines():
        if line.startswith(("rule ", "localrule ", "checkpoint ")):
            inside = line.split()[1].rstrip(":") == rule
        elif inside and line.strip().startswith("reason:"):
            out.append(line.strip())
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Kill a training job mid-run (module fixtures: each kill happens once, the tests inspect it)


def workdir_from_smoke(path: Path, smoke: Path) -> Path:
    """A fresh working directory holding a copy (mtimes kept) of the smoke run's data and anchors."""
    work = make_workdir(path)
    for sub in ("data", "anchors"):
        shutil.copytree(smoke / sub, work / "results" / sub, copy_function=shutil.copy2)
    return work


def training_job(snakemake_pid: int) -> psutil.Process | None:
    """The train.py script job Snakemake runs (``python .../.snakemake/scripts/tmpXXXX.train.py``)."""
    try:
        children = psutil.Process(snakemake_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for child in children:
        try:
            if any(arg.endswith(".train.py") and "/.snakemake/scripts/" in arg for arg in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def checkpoint_step(work: Path) -> int | None:
    files = list((work / CKPT).glob("*.pt"))
    if not files:
        return None
    assert len(files) == 1, files  # only the latest checkpoint is kept
    return torch.load(files[0], map_location="cpu", weights_only=True)["step"]


@dataclass
class Killed:
    """What a kill left behind, recorded before any test reruns anything."""

    work: Path
    returncode: int
    output: str  # Snakemake's stdout + stderr
    killed_at: int  # step of the checkpoint on disk after the kill
    total_steps: int
    leftovers: list[str]  # files in train_esta's output folder after the kill
    dry_run: str  # `snakemake -n` right after the kill


def kill_training(work: Path, whole_group: bool, timeout: float = 600) -> Killed:
    """Run the workflow to TARGET; once the ESTA training job has written a checkpoint and still runs,
    SIGKILL the job alone (``whole_group=False``) or Snakemake and its job together."""
    dry = snakemake(work, "-n", TARGET, *config_args(work, FAST_CHECKPOINTS)).stdout
    jobs = planned_jobs(dry)
    assert not {"pretrain_anchor", "prepare_upstream", "prepare_data"} & set(jobs), jobs  # copies are up to date
    assert jobs.get("train_esta") == 1, jobs

    log_path = work / "snakemake.out"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(smk_cmd(work, TARGET, "--cores", "1", *config_args(work, FAST_CHECKPOINTS)),
                                cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"snakemake ended before a checkpoint:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"no checkpoint within {timeout} s:\n{log_path.read_text()[-4000:]}"
            job = training_job(proc.pid)
            if job is not None and alive(job) and list((work / CKPT).glob("*.pt")):
                break
            time.sleep(0.1)
        if whole_group:
            os.killpg(proc.pid, signal.SIGKILL)  # Snakemake was started as a session (group) leader
        else:
            job.send_signal(signal.SIGKILL)
        returncode = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # SIGKILL is delivered asynchronously: the job (Snakemake's grandchild, not reaped by us) may
    # still be on its way out when Snakemake itself has been reaped
    psutil.wait_procs([job], timeout=30)
    assert not alive(job)
    run = work / RUN
    leftovers = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    # A job killed while writing leaves hidden temporaries (esta.runtime.atomic_path, the checkpoint's
    # `<hash>.tmp-<pid>`); plant some: they must not count as outputs nor disturb the resume.
    run.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_OUTPUTS:
        (run / f".{name}.tmp-999999").write_bytes(b"half-written")
    (work / CKPT / "0123456789abcdef.tmp-999999").write_bytes(b"half-written")
    dry_after = snakemake(work, "-n", TARGET, *config_args(work, FAST_CHECKPOINTS)).stdout
    cfg = yaml.safe_load(SMOKE.read_text())
    steps_per_epoch = -(-cfg["data"]["n_train"] // cfg["esta"]["train"]["batch_size"])
    return Killed(work, returncode, log_path.read_text(), checkpoint_step(work),
                  round(cfg["esta"]["train"]["epochs"] * steps_per_epoch), leftovers, dry_after)


@pytest.fixture(scope="module")
def killed_job(smoke, tmp_path_factory) -> Killed:
    return kill_training(workdir_from_smoke(tmp_path_factory.mktemp("killed_job"), smoke), whole_group=False)


@pytest.fixture(scope="module")
def killed_snakemake(smoke, tmp_path_factory) -> Killed:
    return kill_training(workdir_from_smoke(tmp_path_factory.mktemp("killed_snakemake"), smoke), whole_group=True)


def rerun_and_compare(killed: Killed, smoke: Path) -> dict:
    """Rerun to TARGET; the training job must resume from the kill's checkpoint and the metrics must
    equal the smoke run's."""
    work = killed.work
    snakemake(work, TARGET, "--cores", "1", *config_args(work, FAST_CHECKPOINTS))
    info = yaml.safe_load((work / RUN / "train.json").read_text())
    assert info["resumed_from"] == killed.killed_at
    assert 0 < info["resumed_from"] < info["steps"] == killed.total_steps
    history = pd.read_csv(work / RUN / "train_log.csv")
    assert history["step"].tolist() == list(range(killed.total_steps))  # the whole run, not just the resumed part
    assert_same_metrics(work / TARGET, smoke / "esta" / "default" / TASK / "metrics.csv")
    # the training outputs themselves are those of the uninterrupted run
    ref = smoke / "esta" / "default" / TASK / "seed0" / "tuning"
    for name in ("importance.csv", "train_log.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(work / RUN / name), pd.read_csv(ref / name), check_exact=True)
    assert info["wall_s"] > info["wall_s_segment"] > 0  # the time before the kill is counted too
    return info


def test_sigkill_of_training_job_then_rerun_resumes_with_identical_metrics(killed_job, smoke):
    assert killed_job.returncode != 0
    assert not set(TRAIN_OUTPUTS) & set(killed_job.leftovers), killed_job.leftovers
    assert "Error in rule train_esta" in killed_job.output
    assert "Nothing to be done" not in killed_job.dry_run
    rerun_and_compare(killed_job, smoke)


def test_sigkill_of_snakemake_then_rerun_resumes_with_identical_metrics(killed_snakemake, smoke):
    assert killed_snakemake.returncode == -signal.SIGKILL
    assert not set(TRAIN_OUTPUTS) & set(killed_snakemake.leftovers), killed_snakemake.leftovers
    work = killed_snakemake.work
    # A killed Snakemake leaves its lock behind: the next run refuses to start, says what to do and
    # touches nothing; after `--unlock` (the default profile has rerun-incomplete) it resumes.
    locked = snakemake(work, TARGET, "--cores", "1", *config_args(work, FAST_CHECKPOINTS), check=False)
    assert locked.returncode != 0
    assert "LockException" in locked.stdout + locked.stderr and "--unlock" in locked.stdout + locked.stderr
    assert checkpoint_step(work) == killed_snakemake.killed_at
    assert not (work / RUN / "train.json").exists()
    snakemake(work, "--unlock", *config_args(work, FAST_CHECKPOINTS))
    rerun_and_compare(killed_snakemake, smoke)


@pytest.mark.workflow  # its fixtures need the smoke run (taken through request, so not seen by conftest)
@pytest.mark.parametrize("kill", ["killed_job", "killed_snakemake"])
def test_killed_job_leaves_no_outputs_and_is_planned_again(kill, request):
    killed: Killed = request.getfixturevalue(kill)
    assert 0 < killed.killed_at < killed.total_steps  # killed mid-run, after a checkpoint
    # Nothing that looks complete: no output file of train_esta exists, and anything left in its
    # folder is a hidden temporary of an interrupted atomic write.
    assert not set(TRAIN_OUTPUTS) & set(killed.leftovers), killed.leftovers
    others = [n for n in killed.leftovers if n != "stitch_init.safetensors"]  # ls_init's output, complete
    assert all(name.startswith(".") and ".tmp-" in name for name in others), killed.leftovers
    assert planned_jobs(killed.dry_run).get("train_esta") == 1, killed.dry_run
    why = reasons(killed.dry_run, "train_esta")
    assert "Missing output files" in why or "incomplete" in why.lower(), why
    for name in ("model.safetensors", "train.json"):
        assert f"{RUN}/{name}" in why  # planned because its real outputs are missing


def test_same_seed_twice_gives_identical_metrics(killed_job, smoke):
    """A fresh training job (checkpoints deleted, ``--forcerun train_esta``) in another working
    directory, one core instead of two, gives the smoke run's metrics exactly."""
    work = killed_job.work
    snakemake(work, TARGET, "--cores", "1", "--forcerun", "train_esta", *config_args(work, FAST_CHECKPOINTS))
    info = yaml.safe_load((work / RUN / "train.json").read_text())
    assert info["resumed_from"] == 0
    assert_same_metrics(work / TARGET, smoke / "esta" / "default" / TASK / "metrics.csv")


def test_rerun_of_a_finished_training_job_trains_again(killed_job, smoke):
    work = killed_job.work
    snakemake(work, TARGET, "--cores", "1", *config_args(work, FAST_CHECKPOINTS))  # finished, whatever ran before
    snakemake(work, TARGET, "--cores", "1", "--forcerun", "train_esta", *config_args(work, FAST_CHECKPOINTS))
    info = yaml.safe_load((work / RUN / "train.json").read_text())
    assert info["resumed_from"] == 0, f"resumed at step {info['resumed_from']} of {info['steps']}"
    assert_same_metrics(work / TARGET, smoke / "esta" / "default" / TASK / "metrics.csv")


# ------------------------------------------------------------------------------------------------
# Determinism and checkpoint safety at the level of the training loop (tiny toy family)

N_IMAGES, BATCH = 24, 8


def tiny_model():
    return make_tunable(StitchedViT(make_anchors(seed=0)), TuningConfig(rank=2))


def tiny_cfg(seed: int) -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=BATCH, lr=1e-2, warmup_epochs=1, seed=seed)


def tiny_run(seed: int, ckpt_dir=None, settings=None):
    model = tiny_model()
    data = TensorDataset(make_images(N_IMAGES, seed=5), torch.arange(N_IMAGES) % NUM_CLASSES)
    cfg = tiny_cfg(seed)
    sampler = StitchSampler(model.net.num_stitches, cfg.total_steps(N_IMAGES), SamplerConfig(warmup_frac=0.2), seed=seed)
    result = train(model, data, cfg, sampler, ckpt_dir=ckpt_dir, settings=settings, progress=False)
    return result, {k: v.detach().clone() for k, v in model.trainable().items()}, cfg


def test_training_loop_is_deterministic_given_the_seed():
    (a, pa, _), (b, pb, _), (c, _, _) = tiny_run(0), tiny_run(0), tiny_run(1)
    def key(r):
        return [(h["stitch_id"], h["loss"], h["importance"]) for h in r.history]

    assert key(a) == key(b)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert key(c) != key(a)  # control: the seed matters, so equality above is not vacuous


class _Payload:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tampered(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "params": _Payload(marker), "state_dict": _Payload(marker)}, path)
    torch.load(path, weights_only=False)  # control: a full unpickle really runs the payload ...
    assert marker.exists()
    marker.unlink()  # ... start clean
    return path


def test_tampered_training_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    settings = {"task": "toy", "method": "esta"}
    cfg = tiny_cfg(0)
    # the name train() resumes from: the hash of the settings plus the training recipe
    tampered(tmp_path / "ckpt" / f"{settings_hash(dict(settings, train=cfg.to_dict()))}.pt", marker)
    with pytest.raises((pickle.UnpicklingError, RuntimeError)) as err:
        tiny_run(0, ckpt_dir=tmp_path / "ckpt", settings=settings)
    assert "weights_only" in str(err.value).lower().replace(" ", "_")
    assert not marker.exists()


def test_tampered_pth_anchor_file_is_refused_without_running_code(tmp_path):
    from esta.vit.anchors import build_anchor, family

    marker = tmp_path / "pwned"
    path = tampered(tmp_path / "anchor.pth", marker)
    with pytest.raises((ValueError, RuntimeError, pickle.UnpicklingError)) as err:
        build_anchor(family("embedded")[0], 5, path)
    assert "weights_only" in str(err.value)
    assert str(path) in str(err.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# Bad inputs: one clear error naming the culprit, no partial outputs


@dataclass
class Outcome:
    failed: bool
    errors: int  # distinct errors reported (failed jobs, validation errors, exceptions)
    headline: str  # the error itself: the validation error, a failed job's final exception line
    text: str  # everything the user sees (for the assertion messages)
    outputs: list[Path]  # the failing step's outputs: none may exist, nor a temporary sibling


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception): ")


def config_error(override: dict):
    """A dry run with ``override`` merged over smoke.yaml: it must fail in validation, before any job
    (the culprit must be in the validation headline or in one of its violation lines, each
    "key path = value: message [schema rule ...]", esta.schema)."""

    def provoke(tmp_path: Path) -> Outcome:
        work = make_workdir(tmp_path / "work")
        proc = snakemake(work, "-n", *config_args(work, override), check=False)
        text = proc.stdout + proc.stderr
        lines = text.splitlines()
        heads = [i for i, line in enumerate(lines) if "failed validation against" in line]
        where = [line.strip() for line in lines if "[schema rule " in line]
        headline = "\n".join([lines[i].strip() for i in heads] + where)
        return Outcome(proc.returncode != 0, len(heads), headline, text, [work / "results"])

    provoke.__doc__ = f"`snakemake -n`, override configfile {override}"
    return provoke


def job_error(work: Path, proc: subprocess.CompletedProcess, log: Path, outputs: list[Path]) -> Outcome:
    """A failed job: the culprit must be in the final exception line of its log."""
    text = proc.stdout + proc.stderr
    log_text = log.read_text() if log.is_file() else ""
    finals = [line for line in log_text.splitlines() if EXCEPTION_LINE.match(line)]
    return Outcome(proc.returncode != 0, text.count("Error in rule"), finals[-1] if finals else "",
                   text + log_text, outputs)


def register_data(prepare):
    """``prepare(data_root)`` breaks a VTAB fixture; then results/data/vtab/dtd/manifest.json is built."""

    def provoke(tmp_path: Path) -> Outcome:
        from fixtures import write_vtab_fixture

        root = tmp_path / "data"
        root.mkdir()
        prepare(root, write_vtab_fixture)
        work = make_workdir(tmp_path / "work")
        manifest = work / "results" / "data" / "vtab" / "dtd" / "manifest.json"
        proc = snakemake(work, str(manifest.relative_to(work)), "--cores", "1",
                         *config_args(work, {"data_root": str(root)}), check=False)
        return job_error(work, proc, work / "results" / "logs" / "register_data" / "vtab" / "dtd.log", [manifest])

    provoke.__doc__ = prepare.__doc__
    return provoke


def empty_root(root, write):
    """data_root is an empty folder"""


def corrupt_jpeg(root, write):
    """VTAB fixture, one JPEG overwritten by random bytes"""
    (folder,) = write(root, names=("dtd",))
    (folder / "images" / "train800" / "000000.jpg").write_bytes(np.random.default_rng(0).bytes(2000))


def label_out_of_range(root, write):
    """VTAB fixture, line 2 of train800.txt gets label 9999"""
    (folder,) = write(root, names=("dtd",))
    lines = (folder / "train800.txt").read_text().splitlines(keepends=True)
    lines[1] = lines[1].rsplit(maxsplit=1)[0] + " 9999\n"
    (folder / "train800.txt").write_text("".join(lines))


def truncated_jpeg(tmp_path: Path) -> Outcome:
    """VTAB fixture, one JPEG cut in half, its header intact: register_data's check reads headers only
    (esta.vit.data.check_task, by design), so the first decode must fail naming the image:
    esta.vit.build.open_task, as ls_init and the training jobs call it"""
    from fixtures import write_vtab_fixture

    from esta.vit.build import open_task, write_manifest

    (folder,) = write_vtab_fixture(tmp_path / "data", names=("dtd",))
    image = folder / "images" / "train800" / "000004.jpg"  # 64x48 RGB: its header survives the cut
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    manifest = tmp_path / "results" / "manifest.json"
    write_manifest(manifest, folder, "vtab/dtd")
    try:
        open_task(manifest, "train800", 16)
    except OSError as err:
        return Outcome(True, 1, str(err), str(err), [])
    return Outcome(False, 0, "", "", [])


VIT_S = "vit_small_patch16_224.augreg_in21k.safetensors"
VIT_B = "vit_base_patch16_224.augreg_in21k.safetensors"


def wrong_shape_weights(tmp_path: Path) -> Outcome:
    """ViT-S weight file registered as ViT-Ti (family vit-ti-s-b, anchors.source files)"""
    from fixtures import write_vit_weights

    weights = tmp_path / "weights"
    write_vit_weights(weights, num_classes=10, names=("vit_small_patch16_224",))
    work = make_workdir(tmp_path / "work")
    out = work / "results" / "anchors" / "vit-ti-s-b"
    override = {"family": "vit-ti-s-b", "weights_root": str(weights),
                "anchors": {"source": "files", "weights": [VIT_S, VIT_S, VIT_B]}}
    proc = snakemake(work, str((out / "anchor0.safetensors").relative_to(work)), "--cores", "1",
                     *config_args(work, override), check=False)
    return job_error(work, proc, work / "results" / "logs" / "register_weights" / "vit-ti-s-b" / "anchor0.log",
                     [out / "anchor0.safetensors", out / "anchor0.json"])


def test_matching_weight_file_registers(tmp_path):
    """Control for "wrong-shape weights": a ViT-Ti file named as in config/paper.yaml, with the
    IN-21K head register_weights expects (pretrained_classes 21843), loads as register_weights loads
    it, and its tensors are really used."""
    from fixtures import write_vit_weights
    from safetensors.torch import load_file

    from esta.vit.anchors import build_anchor, family, family_at

    (path,) = write_vit_weights(tmp_path, names=("vit_tiny_patch16_224",))  # 21843 classes by default
    assert path.name == yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["anchors"]["weights"][0]
    spec = family(family_at("vit-ti-s-b", 32))[0]
    anchor = build_anchor(spec, spec.pretrained_classes, path, keep_head=True)
    stored = load_file(str(path))
    assert anchor.head.weight.shape == stored["head.weight"].shape == (21843, 192)
    assert torch.equal(anchor.head.weight, stored["head.weight"])
    assert torch.equal(anchor.blocks[0].attn.qkv.weight, stored["blocks.0.attn.qkv.weight"])


def state_of_other_settings(tmp_path: Path) -> Outcome:
    """esta.vit.build.assemble(rank 4, state_file = a state trained with rank 2)"""
    from esta.vit.build import assemble
    from esta.tensors import save_tensors

    state = tmp_path / "rank2.safetensors"
    save_tensors(assemble("embedded", 5, [None] * 3, tuning_cfg=TuningConfig(rank=2)).trainable(), state)
    try:
        assemble("embedded", 5, [None] * 3, tuning_cfg=TuningConfig(rank=4), state_file=state)
    except ValueError as err:
        return Outcome(True, 1, str(err), str(err), [])
    return Outcome(False, 0, "", "", [])


# (name, how it is provoked, expected culprit: formatted with tmp=<the test's tmp_path, resolved>)
BAD_INPUTS = [
    ("unknown config key", config_error({"bogus_key": 1}), "bogus_key"),
    ("wrong type", config_error({"threads": "many"}), "config.threads"),
    ("negative LoRA rank",
     config_error({"esta": {"lora": {"rank": -2, "alpha": None, "dropout": 0.0, "targets": "attn"}}}),
     "config.esta.lora.rank"),
    ("empty task list", config_error({"tasks": []}), "config.tasks"),
    ("negative LoRA rank in a variant", config_error({"variants": {"rank2": {"esta": {"lora": {"rank": -2}}}}}),
     "rank"),
    ("misspelt key in a variant", config_error({"variants": {"nobias": {"esta": {"stitch_bias": False}}}}),
     "stitch_bias"),
    ("missing dataset", register_data(empty_root), "{tmp}/data/vtab-1k/dtd"),
    ("corrupt JPEG", register_data(corrupt_jpeg), "{tmp}/data/vtab-1k/dtd/images/train800/000000.jpg"),
    ("truncated JPEG", truncated_jpeg, "{tmp}/data/vtab-1k/dtd/images/train800/000004.jpg"),
    ("label out of range", register_data(label_out_of_range), "{tmp}/data/vtab-1k/dtd/train800.txt:2"),
    ("wrong-shape weights", wrong_shape_weights, f"{{tmp}}/weights/{VIT_S}"),
    ("state of other settings", state_of_other_settings, "{tmp}/rank2.safetensors"),
]


def _name(case) -> str:
    return (case.values if hasattr(case, "values") else case)[0]


@pytest.mark.parametrize("name, provoke, culprit", BAD_INPUTS, ids=[_name(b) for b in BAD_INPUTS])
def test_bad_input_gives_one_clear_error_naming_the_culprit(name, provoke, culprit, tmp_path):
    outcome = provoke(tmp_path)
    assert outcome.failed, f"{name}: no error:\n{outcome.text[-3000:]}"
    expected = culprit.format(tmp=tmp_path.resolve())
    assert expected in outcome.headline, f"{name}: {expected!r} not in the error {outcome.headline!r}:\n{outcome.text[-3000:]}"
    assert outcome.errors == 1, outcome.text[-3000:]
    for path in outcome.outputs:
        assert not path.exists(), f"{name}: partial output {path}"
        if path.parent.is_dir():
            temporaries = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-")]
            assert not temporaries, temporaries

