"""Evaluation at paper scale (spec §8, §9): a split too large to hold in memory is read lazily from
disk and decoded by DataLoader workers (config ``data.num_workers``), and the accuracy it gives is
the accuracy of the same split decoded in-process or held in memory."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMG, make_anchors
from torch.utils.data import TensorDataset

from esta.vit.build import open_task, write_manifest
from esta.vit.data import VtabFolder, load_tensors, open_split, task_info, write_vtab_task
from esta.vit.evaluate import evaluate
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TuningConfig, make_tunable

ROOT = Path(__file__).resolve().parents[1]
TASK = "embedded/medical"  # 5 classes, the anchors' head size in conftest


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    rng = np.random.default_rng(0)
    classes = task_info(TASK).num_classes
    # test: 37 images, not a multiple of the batch size, so the last, short batch must count too
    splits = {s: (rng.integers(0, 256, (n, IMG, IMG, 3), dtype=np.uint8), rng.integers(0, classes, n))
              for s, n in (("train800", 8), ("val200", 4), ("test", 37))}
    return write_vtab_task(tmp_path_factory.mktemp("medical") / "medical", splits, classes)


@pytest.fixture(scope="module")
def model():
    return make_tunable(StitchedViT(make_anchors()), TuningConfig(mode="pst", rank=2))


def test_lazy_split_with_workers_gives_the_in_process_accuracy(folder, model):
    lazy = open_split(folder, TASK, "test", IMG)
    assert isinstance(lazy, VtabFolder)  # read from disk per batch, not a tensor copy
    ids = list(range(model.net.num_stitches))
    serial = evaluate(model, lazy, ids, batch_size=8, num_workers=0)
    workers = evaluate(model, lazy, ids, batch_size=8, num_workers=2)
    in_memory = evaluate(model, TensorDataset(*load_tensors(lazy)), ids, batch_size=8)
    assert workers == serial == in_memory
    # random anchors on random labels: accuracies that differ between stitches, so equal dicts mean
    # the same images met the same labels, not just the same constant
    assert len(set(serial.values())) > 1 and all(a == round(a * 37) / 37 for a in serial.values())


def test_open_task_decodes_with_workers_the_same_tensors(folder, tmp_path):
    manifest = write_manifest(tmp_path / "manifest.json", folder, TASK)
    serial, workers = (open_task(manifest, "test", IMG, num_workers=n) for n in (0, 2))
    assert len(serial) == 37
    for a, b in zip(serial.tensors, workers.tensors, strict=True):
        assert torch.equal(a, b)


def test_evaluation_scripts_pass_num_workers_to_open_task_and_evaluate():
    """Both evaluation jobs open and decode their split with ``data.num_workers`` workers."""
    rules = (ROOT / "workflow" / "rules" / "evaluate.smk").read_text()
    for name in ("evaluate_deployed", "evaluate_stitches"):
        tree = ast.parse((ROOT / "workflow" / "scripts" / f"{name}.py").read_text())
        calls = {n.func.id: n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "")
                 in ("open_task", "evaluate")}
        assert set(calls) == {"open_task", "evaluate"}, name
        assert any(getattr(a, "attr", None) == "num_workers" for a in calls["open_task"].args), name
        assert "num_workers" in {k.arg for k in calls["evaluate"].keywords}, name
        block = rules.split(f"rule {name}:")[1].split("\nrule ")[0]
        assert 'num_workers=config["data"]["num_workers"]' in block, name
