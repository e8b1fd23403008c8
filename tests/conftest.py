"""Shared fixtures: a tiny three-anchor ViT family built with timm (random init, nothing downloaded).

The tiny family mirrors the paper's Ti/S/B at toy size: 16 px images, patch 8 (4 patches + cls =
5 tokens), depth 4, head dim 16, widths 16/32/48 -> 3 + 2 * (3*4 - 2) = 23 stitches. timm
initialises every bias to zero and every LayerNorm to (1, 0); the fixtures perturb them so that tests
about copied, merged or exported biases cannot pass by accident.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

from esta.stitches import enumerate_stitches

torch.set_num_threads(1)  # 2-core CI box, often shared: one thread is fastest for these toy models

IMG = 16
DEPTH = 4
WIDTHS = (16, 32, 48)
NUM_CLASSES = 5


def tiny_arch(widths=WIDTHS, depth=DEPTH) -> list[dict]:
    """``{"timm_name", "kwargs"}`` per anchor, the form ``esta.vit.export.export_stitch`` records."""
    return [
        dict(
            timm_name="vit_tiny_patch16_224",
            kwargs=dict(img_size=IMG, patch_size=8, embed_dim=w, depth=depth, num_heads=w // 16),
        )
        for w in widths
    ]


def make_anchors(widths=WIDTHS, depth=DEPTH, num_classes=NUM_CLASSES, seed=0) -> list[torch.nn.Module]:
    """Random-init timm ViTs with non-trivial biases and norms, in eval mode. Same seed, same weights."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # timm's own init draws from the global generator
    anchors = []
    for arch in tiny_arch(widths, depth):
        vit = timm.create_model(arch["timm_name"], pretrained=False, num_classes=num_classes, **arch["kwargs"])
        with torch.no_grad():
            for name, p in vit.named_parameters():
                if name.endswith(".bias") or ".norm" in name or name.startswith("norm."):
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
        anchors.append(vit.eval())
    return anchors


def trained_like(mode: str, seed: int = 3):
    """A tunable model of the tiny family whose trainable parameters are perturbed as after some
    training: stitch biases differ from the shared ones and LoRA B is non-zero (train mode)."""
    from esta.vit.stitch import StitchedViT
    from esta.vit.tuning import TuningConfig, make_tunable

    torch.manual_seed(0)
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(mode=mode, rank=2))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable().values():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.train()


def perturb_as_trained(model: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    """``model`` in eval mode with every parameter that trains, and the stitching layers, perturbed as
    after training, read from the model itself (not from what a palette collects), so a tensor a
    palette skipped would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if t.requires_grad or name.startswith("net.stitch_layers."):
                t.add_(0.05 * torch.randn(t.shape, generator=g))
    return model.eval()


def make_images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def expected_path(stitch_id: int, depth: int = DEPTH, n_anchors: int = 3):
    """From the stitch table alone: (LoRA names, bias names, head weight name) of one stitch's path,
    as named inside the adapted model (peft wraps targets, their bias becomes ``base_layer.bias``)."""
    s = enumerate_stitches([depth] * n_anchors)[stitch_id]
    if s.is_anchor:
        blocks = [(s.front, b) for b in range(depth)]
    else:
        blocks = [(s.front, b) for b in range(s.j + 1)] + [(s.end, b) for b in range(s.k, depth)]
    lora, biases = set(), set()
    for a, b in blocks:
        blk = f"anchors.{a}.blocks.{b}"
        for proj in ("qkv", "proj"):
            lora |= {f"net.{blk}.attn.{proj}.lora_{ab}.default.weight" for ab in "AB"}
            biases.add(f"{blk}.attn.{proj}.base_layer.bias")
        biases |= {f"{blk}.mlp.fc1.bias", f"{blk}.mlp.fc2.bias"}
    if not s.is_anchor:
        layer = f"stitch_layers.{s.front}.{s.layer}"
        lora |= {f"net.{layer}.lora_{ab}.default.weight" for ab in "AB"}
        biases.add(f"{layer}.base_layer.bias")
    biases.add(f"anchors.{s.end}.head.bias")
    return lora, biases, f"net.anchors.{s.end}.head.weight"


@pytest.fixture
def anchors() -> list[torch.nn.Module]:
    return make_anchors()


@pytest.fixture
def images() -> torch.Tensor:
    return make_images(6)


# ------------------------------------------------------------------------------------------------
# Running the workflow (tests/test_workflow.py, tests/test_reliability.py)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as its working directory."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_workdir(path: Path) -> Path:
    """A working directory like a checkout: config files and the esta sources the rules list as code."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "config", "esta", "workflow"):
        if not (path / name).exists():
            (path / name).symlink_to(ROOT / name)
    return path


def pytest_addoption(parser):
    parser.addoption(
        "--smoke-dir",
        default=None,
        help="keep the smoke run in this folder across test sessions: Snakemake reruns only the jobs whose code, "
        "params or inputs changed (for development; CI runs it afresh in a temporary folder)",
    )


SMOKE_TIMEOUT_S = 2400  # the smoke run alone takes ~9 min on the 2-core CI box; beside a second test worker, longer


def _uses_smoke(item) -> bool:
    return "smoke" in getattr(item, "fixturenames", ())


def _shared_tmp(tmp_path_factory) -> Path:
    """A folder every worker of this test run sees: pytest-xdist gives each worker its own basetemp
    inside the run's (``.../popen-gw0``), a plain run has one."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _smoke_work(request, tmp_path_factory) -> Path:
    kept = request.config.getoption("--smoke-dir")
    return make_workdir(Path(kept).resolve() if kept else _shared_tmp(tmp_path_factory) / "smoke")


@pytest.fixture(scope="session", autouse=True)
def _smoke_started(request, tmp_path_factory):
    """Start the smoke run in the background as soon as a session that needs it begins, so that it
    runs beside the tests that do not need it instead of holding up the first one that does. One run
    per test run: with pytest-xdist the worker that creates the run's ``smoke-started`` folder first
    launches it and every worker waits for the run's ``smoke-returncode`` (written last, by a rename,
    so a file that exists belongs to this run's finished smoke run)."""
    if not any(_uses_smoke(item) for item in request.session.items):
        yield None
        return
    work, shared = _smoke_work(request, tmp_path_factory), _shared_tmp(tmp_path_factory)
    done = shared / "smoke-returncode"
    proc = None
    try:
        (shared / "smoke-started").mkdir()
    except FileExistsError:
        pass  # another worker of this run launched it
    else:
        cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work),
               "--cores", "2", "--configfile", str(ROOT / "config" / "smoke.yaml")]
        script = (f"{shlex.join(cmd)} > .smoke.log 2>&1; "
                  f"echo $? > {shlex.quote(str(done))}.tmp && mv {shlex.quote(str(done))}.tmp {shlex.quote(str(done))}")
        proc = subprocess.Popen(["bash", "-c", script], cwd=work, start_new_session=True)
    try:
        yield work, done
    finally:
        if proc is not None and proc.poll() is None:
            if os.environ.get("PYTEST_XDIST_WORKER"):
                proc.wait()  # another worker may still need the run this one launched
            else:  # nothing else needs it (a session stopped early): stop it the way Ctrl-C would
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait()


@pytest.fixture(scope="session")
def smoke(_smoke_started, request, tmp_path_factory) -> Path:
    """config/smoke.yaml run for real to rule all, once per test run (started by ``_smoke_started``;
    run here, in the foreground, for a test that asks for it by name only, ``request.getfixturevalue``)."""
    if _smoke_started is None:
        work = _smoke_work(request, tmp_path_factory)
        snakemake(work, "--cores", "2", "--configfile", str(ROOT / "config" / "smoke.yaml"), timeout=SMOKE_TIMEOUT_S)
        return work / "results"
    work, done = _smoke_started
    deadline = time.monotonic() + SMOKE_TIMEOUT_S
    while not done.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the smoke run did not finish in {SMOKE_TIMEOUT_S} s; its log: {work / '.smoke.log'}")
        time.sleep(2)
    code = int(done.read_text())
    if code != 0:
        log = (work / ".smoke.log").read_text()
        raise AssertionError(f"the smoke run failed ({code}):\n{log[-6000:]}")
    return work / "results"


def pytest_collection_modifyitems(items):
    """Every test that needs the smoke run (directly or through another fixture) runs the workflow
    for real: mark it, so that `-m "not workflow"` leaves only the fast tests. The files that hold such
    a test run last, each whole and in its own order (a module's tests may rely on it, e.g. a server
    stopped by its last test), so the other files run while the smoke run is under way and neither
    test worker sits waiting for it with files left to run."""
    with_smoke = set()
    for item in items:
        if _uses_smoke(item):
            item.add_marker(pytest.mark.workflow)
            with_smoke.add(item.nodeid.split("::")[0])
    items.sort(key=lambda item: item.nodeid.split("::")[0] in with_smoke)
