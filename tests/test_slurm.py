"""workflow/profiles/slurm against a real SLURM (issue 32), and the DAG as a cluster's login node builds it.

``slurm_cluster`` (once per test session) runs tests/slurm/start.sh: slurm-wlm and munge from Debian's
packages where missing, a one-node SLURM 22.05 with this machine's CPUs and memory, one partition
``main``; it needs root and apt, as CI has (the tests fail, not skip, without them). The run test builds
the smoke config's ``embedded/digits`` metrics through the profile exactly as docs/cluster.md tells a user
to (account and partition on the command line, ``--workflow-profile workflow/profiles/slurm-cpu``: this
node has no GPU), cancels the training job with ``scancel`` once it has written a checkpoint, and checks
SLURM's own job records (``scontrol show job``: the cluster keeps finished jobs for MinJobAge, 1 h, and
the profile's ``squeue`` status mode needs no accounting database), the resumed training and the metrics
against the session's local smoke run. A second run submits the smoke config's Stitched LLaMA training
(``llm.nproc: 2``: torchrun inside one job of 2 CPUs) and compares it with the local run's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from conftest import BIN, ROOT, make_workdir, snakemake
from test_reliability import (CKPT, FAST_CHECKPOINTS, RUN, SMOKE, TARGET, TASK, assert_same_metrics, checkpoint_step,
                              config_args, planned_jobs, workdir_from_smoke)

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
CPU_PROFILE = ROOT / "workflow" / "profiles" / "slurm-cpu"
ACCOUNT, PARTITION = "esta", "main"  # the overrides a user sets (start.sh's partition)
USER_ARGS = ["--profile", str(PROFILE), "--default-resources", f"slurm_account={ACCOUNT}",
             f"slurm_partition={PARTITION}"]
GPU_KEYS = {"gpu", "slurm_partition"}


def profile(path: Path = PROFILE) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def expected(rule: str, threads: int, table: dict) -> dict:
    """The profile's resources of ``rule`` with its expressions evaluated (``mem_mb: "8000 * threads"``)."""
    return {k: eval(v, {"threads": threads}) if isinstance(v, str) and k != "slurm_partition" else v  # noqa: S307
            for k, v in table.get(rule, {}).items()}


def jobs_in_log(text: str) -> dict[str, dict]:
    """Snakemake job id -> {rule, threads, resources} from the job blocks Snakemake prints."""
    jobs, rule, threads = {}, None, 1
    for line in text.splitlines():
        head = re.match(r"^(?:local)?rule (\w+):", line)
        if head:
            rule, threads, jobid = head.group(1), 1, None
        elif rule and (m := re.match(r"^\s+jobid: (\d+)", line)):
            jobid = m.group(1)
        elif rule and (m := re.match(r"^\s+threads: (\d+)", line)):
            threads = int(m.group(1))
        elif rule and jobid and line.strip().startswith("resources:"):
            res = dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))
            jobs[jobid] = dict(rule=rule, threads=threads, resources=res)
            rule = None
    return jobs


def paper_dry_run(tmp_path: Path, *extra: str) -> dict[str, list[dict]]:
    """Rule -> {threads, resources} of each job Snakemake plans for config/paper.yaml through the profile."""
    work = make_workdir(tmp_path)
    # --cores 8: a dry run caps threads at its cores (1 unless given); under SLURM nothing caps them
    out = snakemake(work, "-n", "--cores", "8", *USER_ARGS[:2], *extra, "--default-resources", "slurm_account=abc123",
                    "slurm_partition=cpu", "--configfile", str(ROOT / "config" / "paper.yaml"), timeout=600).stdout
    by_rule: dict[str, list[dict]] = {}
    for job in jobs_in_log(out).values():
        by_rule.setdefault(job["rule"], []).append(job)
    counts = planned_jobs(out)
    assert counts and {r: len(v) for r, v in by_rule.items()} == counts, "a planned job printed no resources"
    return by_rule


# ------------------------------------------------------------------------------------------------
# The profile, without a cluster


def test_cpu_profile_is_the_slurm_profile_without_gpus():
    gpu, cpu = profile()["set-resources"], profile(CPU_PROFILE)["set-resources"]
    assert set(cpu) == set(gpu)
    for rule, res in gpu.items():
        assert cpu[rule] == {k: v for k, v in res.items() if k not in GPU_KEYS}, rule
    assert any("gpu" in res for res in gpu.values())  # control: there were GPU requests to drop
    assert set(profile(CPU_PROFILE)) == {"set-resources"}  # everything else comes from the slurm profile


def test_default_resources_hold_only_what_a_user_overrides():
    """A command-line --default-resources replaces the profile's whole list (Snakemake's profile
    semantics): job sizes kept there would silently vanish when a user sets the account."""
    assert set(profile()["default-resources"]) == {"slurm_account", "slurm_partition"}


def test_paper_dry_run_plans_every_job_with_the_documented_resources(tmp_path):
    """Every job of config/paper.yaml's rule all (a dry run, 3,000+ jobs) gets the account, the
    partition and, for the rules the profile sizes, its GPU, memory and time. (The CPU-only profile
    is the same table less the GPU keys, test above; the SLURM run below uses it.)"""
    table = profile()["set-resources"]
    threads = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())["threads"]
    planned = paper_dry_run(tmp_path)
    assert planned["train_esta"] and planned["register_data"]
    assert {job["resources"]["mem_mb"] for job in planned["train_esta"]} == {"64000"}  # 8 threads x 8000
    for rule, jobs in planned.items():
        # a dry run prints no threads; the rules the profile sizes per thread run config threads
        want = expected(rule, threads, table)
        for job in jobs:
            res = job["resources"]
            assert res["slurm_account"] == "abc123", (rule, res)
            assert res["slurm_partition"] == want.get("slurm_partition", "cpu"), (rule, res)
            assert res.get("gpu") == (str(want["gpu"]) if "gpu" in want else None), (rule, res)
            for key in ("mem_mb", "runtime"):
                if key in want:
                    assert res[key] == str(want[key]), (rule, key, res)
    # the documented table (docs/cluster.md) is the profile's
    docs = (ROOT / "docs" / "cluster.md").read_text()
    for rule, res in profile()["set-resources"].items():
        row = re.search(rf"^\| `{rule}` \|(.*)\|$", docs, re.M)
        assert row, f"docs/cluster.md has no row for {rule}"
        cells = [c.strip().strip("`") for c in row.group(1).split("|")]
        assert cells == [str(res.get("gpu", "-")), str(res["mem_mb"]), str(res["runtime"])], (rule, cells)


# ------------------------------------------------------------------------------------------------
# A real SLURM


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node SLURM for the test session (tests/slurm/start.sh), stopped afterwards."""
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start a cluster and need root (and apt-get where slurm-wlm is missing)")
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "start.sh"), str(state)], capture_output=True,
                           text=True, timeout=420)
    try:
        assert start.returncode == 0, f"tests/slurm/start.sh failed:\n{start.stdout[-3000:]}\n{start.stderr[-3000:]}"
        yield state
    finally:
        subprocess.run(["bash", str(ROOT / "tests" / "slurm" / "stop.sh"), str(state)], timeout=120)


def job_records(name: str) -> dict[str, dict]:
    """SLURM job id -> ``scontrol show job`` fields of the jobs named ``name`` (a Snakemake run id)."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner"], capture_output=True, text=True, check=True).stdout
    records = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w[\w:/]*)=(\S*)", line))
        if fields.get("JobName") == name:
            records[fields["JobId"]] = fields
    return records


def minutes(limit: str) -> int | None:
    """SLURM's time limit (``[D-]HH:MM:SS``, ``UNLIMITED``) in minutes."""
    if limit == "UNLIMITED":
        return None
    days, _, clock = limit.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (s > 0)


def submissions(text: str) -> list[tuple[str, str]]:
    """(Snakemake job id, SLURM job id) of every submission the run logged (a retried job twice)."""
    return re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", text)


def running_training_job() -> str | None:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True).stdout
    ids = [i for i, _, comment in (line.partition("|") for line in out.splitlines()) if comment.startswith("rule_train_esta")]
    return ids[0] if ids else None


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, smoke, tmp_path_factory):
    """The smoke config's embedded/digits metrics through the SLURM profile; the training job is
    cancelled with scancel once it has written a checkpoint, and resubmitted by ``retries: 1``."""
    work = workdir_from_smoke(tmp_path_factory.mktemp("slurm_run"), smoke)
    args = [TARGET, *USER_ARGS, "--workflow-profile", str(CPU_PROFILE), *config_args(work, FAST_CHECKPOINTS)]
    planned = planned_jobs(snakemake(work, "-n", *args).stdout)
    assert planned.get("train_esta") == 1 and "pretrain_anchor" not in planned, planned
    log = work / "snakemake.out"
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cancelled = cancelled_at = None
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and cancelled is None:
            assert time.monotonic() < deadline, f"no checkpoint under SLURM in 600 s:\n{log.read_text()[-4000:]}"
            job = running_training_job()
            if job and list((work / CKPT).glob("*.pt")):
                subprocess.run(["scancel", job], check=True)
                cancelled = job
                time.sleep(1)  # the checkpoint on disk is the one the resubmitted job resumes from
                cancelled_at = checkpoint_step(work)
            time.sleep(0.2)
        returncode = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    text = log.read_text()
    assert returncode == 0, text[-6000:]
    assert cancelled is not None, f"the training job finished before a checkpoint was seen:\n{text[-3000:]}"
    run_id = re.search(r"SLURM run ID: (\S+)", text).group(1)
    return dict(work=work, text=text, planned=planned, cancelled=cancelled, cancelled_at=cancelled_at,
                records=job_records(run_id), leftovers=processes_of(work))


def processes_of(work: Path) -> list[str]:
    """Processes still running a job of ``work`` (their command line names the folder)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(work) in cmd:
            found.append(f"{p.pid}: {cmd[:200]}")
    return found


@pytest.mark.slurm
def test_every_job_went_through_slurm_once(slurm_run):
    records = slurm_run["records"]
    assert set(records) == {theirs for _, theirs in submissions(slurm_run["text"])} != set()
    done = [r["Comment"] for r in records.values() if r["JobState"] == "COMPLETED"]
    # one completed SLURM job per rule instance (the comment names rule and wildcards)
    assert len(done) == len(set(done)) == sum(slurm_run["planned"].values()), (done, slurm_run["planned"])
    by_rule = pd.Series([c.split("_wildcards_")[0].removeprefix("rule_") for c in done]).value_counts().to_dict()
    assert by_rule == slurm_run["planned"]
    others = {i: r["JobState"] for i, r in records.items() if r["JobState"] != "COMPLETED"}
    assert others == {slurm_run["cancelled"]: "CANCELLED"}
    assert all(r["Account"] == ACCOUNT and r["Partition"] == PARTITION for r in records.values())


@pytest.mark.slurm
def test_threads_memory_and_runtime_reached_sbatch(slurm_run):
    """Read back from SLURM's job records: CPUs = the rule's threads, memory and time limit = the
    profile's (or Snakemake's default memory and the partition's unlimited time for rules it leaves out)."""
    jobs = jobs_in_log(slurm_run["text"])
    table = profile(CPU_PROFILE)["set-resources"]
    seen = set()
    for ours, theirs in submissions(slurm_run["text"]):
        job, record = jobs[ours], slurm_run["records"][theirs]
        want = expected(job["rule"], job["threads"], table)
        assert int(record["NumCPUs"]) == job["threads"], (job, record["NumCPUs"])
        assert record["MinMemoryNode"] == f"{want.get('mem_mb', job['resources']['mem_mb'])}M", (job, record)
        assert minutes(record["TimeLimit"]) == want.get("runtime"), (job, record["TimeLimit"])
        seen.add(job["rule"])
    assert {"train_esta", "ls_init", "task_metrics"} <= seen  # sized by the profile, and not


@pytest.mark.slurm
def test_scancelled_training_resumes_from_its_checkpoint_with_the_local_metrics(slurm_run, smoke):
    work = slurm_run["work"]
    info = yaml.safe_load((work / RUN / "train.json").read_text())
    assert 0 < info["resumed_from"] < info["steps"], info
    assert info["resumed_from"] >= slurm_run["cancelled_at"] > 0
    assert f"SLURM-job '{slurm_run['cancelled']}' failed, SLURM status is: 'CANCELLED'" in slurm_run["text"]
    assert slurm_run["leftovers"] == []  # the cancelled job left no process behind
    assert_same_metrics(work / TARGET, smoke / "esta" / "default" / TASK / "metrics.csv")
    ref = smoke / "esta" / "default" / TASK / "seed0" / "tuning"
    for name in ("importance.csv", "train_log.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(work / RUN / name), pd.read_csv(ref / name), check_exact=True)


# ------------------------------------------------------------------------------------------------
# Stitched LLaMA's data-parallel training under SLURM: one job, torchrun inside its allocation

LLM_TARGET = "results/llm/esta/default/seed0/model.safetensors"
LLM_RUN = Path(LLM_TARGET).parent
LLM_MEM_MB = 4000  # the profile's 128 GB is sized for LLaMA-7B; this node has less


@pytest.fixture(scope="module")
def slurm_llm_run(slurm_cluster, smoke, tmp_path_factory):
    """The smoke config's llm_train_esta (llm.nproc 2) through the profile, its inputs copied from the
    session's local smoke run (mtimes kept), so that the one job SLURM runs is the one compared."""
    work = make_workdir(tmp_path_factory.mktemp("slurm_llm"))
    shutil.copytree(smoke / "llm", work / "results" / "llm", copy_function=shutil.copy2,
                    ignore=lambda d, names: [n for n in names if n in ("esta", "anchor_ft") and Path(d) == smoke / "llm"])
    (work / "results" / "tables").mkdir(parents=True)
    shutil.copy2(smoke / "tables" / "llm_stitches.csv", work / "results" / "tables")
    # a command-line --set-resources, as a user of a small node gives it; the account and partition
    # as in the run above
    args = [LLM_TARGET, *USER_ARGS, "--workflow-profile", str(CPU_PROFILE), "--set-resources",
            f"llm_train_esta:mem_mb={LLM_MEM_MB}", "--configfile", str(SMOKE)]
    planned = planned_jobs(snakemake(work, "-n", *args).stdout)
    assert planned == {"llm_train_esta": 1}, planned
    out = snakemake(work, *args, timeout=900)
    text = out.stdout + out.stderr
    run_id = re.search(r"SLURM run ID: (\S+)", text).group(1)
    return dict(work=work, text=text, records=job_records(run_id))


@pytest.mark.slurm
def test_llm_torchrun_job_gets_its_processes_cpus_from_slurm(slurm_llm_run, smoke):
    """llm.nproc 2 x threads 1: one SLURM task of 2 CPUs (--cpus-per-task), in which the job's
    torchrun --standalone started both ranks; read back from SLURM's record of the job."""
    cfg = yaml.safe_load(SMOKE.read_text())
    nproc = cfg["llm"]["nproc"]
    assert nproc == 2
    ((theirs, record),) = slurm_llm_run["records"].items()
    assert [t for _, t in submissions(slurm_llm_run["text"])] == [theirs]
    assert record["JobState"] == "COMPLETED" and record["Comment"].startswith("rule_llm_train_esta")
    assert int(record["NumCPUs"]) == cfg["threads"] * nproc and int(record["NumTasks"]) == 1, record
    assert record["MinMemoryNode"] == f"{LLM_MEM_MB}M"
    info = yaml.safe_load((slurm_llm_run["work"] / LLM_RUN / "train.json").read_text())
    assert info["nproc"] == nproc  # trained by 2 ranks, not one process on 2 CPUs
    log = (slurm_llm_run["work"] / "results" / "logs" / "llm_train_esta" / "default" / "seed0.log").read_text()
    assert f"{nproc} process(es)" in log


@pytest.mark.slurm
def test_llm_torchrun_under_slurm_equals_the_local_run(slurm_llm_run, smoke):
    """The same 2-process job, run locally by the smoke run and under SLURM: the same stitch sequence,
    losses and importance statistics, and the same trainable state (1e-6: gloo's all-reduce of two
    ranks sums in a fixed order, so the runs are equal in practice)."""
    from esta.tensors import load_tensors_file

    work, local = slurm_llm_run["work"] / LLM_RUN, smoke / "llm" / "esta" / "default" / "seed0"
    for name in ("train_log.csv", "importance.csv"):
        ours, theirs = pd.read_csv(work / name), pd.read_csv(local / name)
        timing = [c for c in ours.columns if c.endswith(("_s", "wall"))]
        pd.testing.assert_frame_equal(ours.drop(columns=timing), theirs.drop(columns=timing), rtol=1e-6)
    a, _ = load_tensors_file(work / "model.safetensors")
    b, meta = load_tensors_file(local / "model.safetensors")
    assert meta["nproc"] == 2 and set(a) == set(b) and a
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-6


# ------------------------------------------------------------------------------------------------
# The DAG on a login node: a custom data set's fingerprint is cheap, and a symlink cycle is refused


def tree(root: Path, classes: int = 3, per_class: int = 40) -> Path:
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i:03d}.jpg").write_bytes(b"x")
    return root


def test_fingerprint_stats_folders_not_files(tmp_path, monkeypatch):
    from esta.vit.data import custom, imagefolder

    root = tree(tmp_path / "data")
    calls = []
    real = os.stat
    for module in (custom.os, imagefolder.os):
        monkeypatch.setattr(module, "stat", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    custom.fingerprint(root)
    folders = 1 + 2 + 2 * 3
    assert 0 < len(calls) <= 2 * folders + 1 < 240  # 240 files: none gets a stat of its own (+1: root exists?)
    calls.clear()
    custom.fingerprint(root, stat_files=True)
    assert len(calls) >= 240  # control: Hugging Face data (few large files) stats every file


def test_fingerprint_sees_added_removed_and_renamed_files(tmp_path):
    from esta.vit.data.custom import fingerprint

    root = tree(tmp_path / "data")
    seen = {fingerprint(root)}
    image = root / "train" / "c1" / "007.jpg"
    image.rename(image.with_name("007b.jpg"))
    seen.add(fingerprint(root))
    image.with_name("007b.jpg").unlink()
    seen.add(fingerprint(root))
    (root / "test" / "c0" / "new.jpg").write_bytes(b"y")
    seen.add(fingerprint(root))
    assert len(seen) == 4
    assert fingerprint(root) == fingerprint(root)
    # a file rewritten in place (same name): seen with stat_files (Hugging Face data), by design not in
    # an image folder's fingerprint (register_data's own full check reads it when it reruns)
    before, before_hf = fingerprint(root), fingerprint(root, stat_files=True)
    (root / "test" / "c0" / "new.jpg").write_bytes(b"longer")
    assert fingerprint(root, stat_files=True) != before_hf and fingerprint(root) == before


def cycle(root: Path) -> Path:
    """An image folder whose class folder holds a link back to its split folder."""
    from fixtures import write_imagefolder_fixture

    write_imagefolder_fixture(root)
    link = root / "training" / "cat" / "loop"
    link.symlink_to(root / "training", target_is_directory=True)
    return link


def test_symlink_cycle_is_refused_naming_the_link(tmp_path):
    from esta.vit.data.custom import describe_custom, fingerprint, CustomDataset

    link = cycle(tmp_path / "mine")
    with pytest.raises(ValueError, match=re.escape(f"{link} points to {tmp_path.resolve() / 'mine' / 'training'}")):
        fingerprint(tmp_path / "mine")
    # register_data's full check walks the same way
    entry = CustomDataset.from_config("mine", dict(source="imagefolder", path=str(tmp_path / "mine")))
    with pytest.raises(ValueError, match="symbolic link cycle"):
        describe_custom("custom/mine", entry)
    # a link to a folder elsewhere is followed, not refused
    link.unlink()
    link.symlink_to(tmp_path / "mine" / "test" / "dog", target_is_directory=True)
    assert fingerprint(tmp_path / "mine")


def test_symlink_cycle_fails_the_dry_run_once_naming_the_link(tmp_path):
    link = cycle(tmp_path / "mine")
    work = make_workdir(tmp_path / "work")
    override = {"datasets": {"mine": {"source": "imagefolder", "path": str(tmp_path / "mine")}},
                "tasks": ["embedded/digits", "custom/mine"], "llm": {"enabled": False}}
    (work / "mine.yaml").write_text(yaml.safe_dump(override))
    proc = snakemake(work, "-n", "--configfile", str(SMOKE), str(work / "mine.yaml"), check=False, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count(f"symbolic link cycle: {link}") == 1, text[-3000:]
