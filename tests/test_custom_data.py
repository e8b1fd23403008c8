"""A user's own data as tasks custom/<name> (spec §13): image folders and Hugging Face datasets on disk,
registered whole (manifest with classes, sizes and sha256), opened for training, and every bad input
refused with one error naming its path, key or record before any training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_hf_fixture, write_imagefolder_fixture
from PIL import Image

from esta.vit.build import open_task, register_task
from esta.vit.data import mode_splits
from esta.vit.data.custom import CustomDataset, fingerprint, held_out
from esta.vit.data.imagefolder import SPLIT_NAMES


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """load_dataset("parquet") converts to Arrow in the HF cache: keep it out of the home folder."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def register(tmp_path: Path, name: str, **dataset) -> dict:
    return register_task(tmp_path / "results" / name / "manifest.json", f"custom/{name}", None, dataset)


def test_split_names_are_timms():
    from timm.data import dataset_factory

    assert set(SPLIT_NAMES["train"]) == set(dataset_factory._TRAIN_SYNONYM)
    assert set(SPLIT_NAMES["val"]) == set(dataset_factory._EVAL_SYNONYM)


def test_imagefolder_manifest_counts_hashes_and_skips(tmp_path):
    root = write_imagefolder_fixture(tmp_path / "mine", classes=("dog", "cat", "eel"), n=(6, 3, 4))
    m = register(tmp_path, "mine", source="imagefolder", path=str(root))
    assert json.loads((tmp_path / "results" / "mine" / "manifest.json").read_text()) == m
    assert m["classes"] == ["cat", "dog", "eel"] and m["num_classes"] == 3  # sorted, not creation order
    assert m["splits"] == {"train": 18, "val": 9, "trainval": 27, "test": 12}
    assert m["parts"]["train"]["name"] == "training" and m["selection"] == {"source": "val", "name": "val"}
    # per split: a hidden folder and a .DS_Store per class; notes.txt per class; README beside the classes
    assert m["skipped"]["test"] == {"hidden": 4, "non_image": 3, "unfiled": 1}
    images = sorted(p for p in (root / "test").rglob("*") if p.is_file() and "." + p.name.split(".")[-1] in
                    (".jpg", ".png", ".bmp", ".tif", ".webp") and not any(s.startswith(".") for s in p.parts))
    lines = sorted(images, key=lambda p: (p.relative_to(root / "test").parts[0], p))
    digest = hashlib.sha256("".join(f"{p.relative_to(root).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                                    for p in lines).encode()).hexdigest()
    assert m["files"]["test"] == {"images": 12, "bytes": sum(p.stat().st_size for p in images), "sha256": digest}


def test_imagefolder_items_are_rgb_with_their_folders_label(tmp_path):
    root = write_imagefolder_fixture(tmp_path / "mine")
    m = register(tmp_path, "mine", source="imagefolder", path=str(root))
    test = open_task(m, "test", 16, lazy=True)
    modes = {Image.open(p).mode for p in test.paths}
    assert {"L", "RGBA", "P", "CMYK", "1", "I;16"} <= modes  # every mode, every size, one transform
    for i, path in enumerate(test.paths):
        x, y = test[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32
        assert m["classes"][y] == path.relative_to(root / "test").parts[0]
    assert not any(p.name.startswith(".") or p.suffix == ".txt" for p in test.paths)


def test_missing_selection_split_is_a_recorded_seeded_fraction_of_train(tmp_path):
    root = write_imagefolder_fixture(tmp_path / "mine", splits=("train", None, "test"), n=(10, 0, 2))
    m = register(tmp_path, "mine", source="imagefolder", path=str(root), val_frac=0.2)
    assert m["selection"] == {"source": "train", "name": "train", "val_frac": 0.2, "seed": 0}
    assert m["splits"] == {"train": 24, "val": 6, "trainval": 30, "test": 6}
    train, val, trainval = (open_task(m, s, 16, lazy=True) for s in ("train", "val", "trainval"))
    paths = trainval.paths
    got_train = {paths[i] for i in train.indices}
    got_val = {paths[i] for i in val.indices}
    assert not got_train & got_val and got_train | got_val == set(paths)
    assert (train.indices, val.indices) == held_out(30, 0.2)  # reproducible: the seed is fixed
    assert mode_splits("custom/mine", "tuning") == ("train", "val")
    assert mode_splits("custom/mine", "final") == ("trainval", "test")


@pytest.mark.parametrize("form", ["parquet", "dict", "per_split"])
def test_hf_forms_read_the_same_data(tmp_path, form):
    root = write_hf_fixture(tmp_path / form, form=form, image_key="img", label_key="target", n=(10, 4), val=3)
    m = register(tmp_path, form, source="hf", path=str(root), image_key="img", label_key="target")
    assert m["classes"] == ["ant", "bee", "cow"]  # the ClassLabel's names
    assert m["splits"] == {"train": 10, "val": 3, "trainval": 13, "test": 4}
    assert m["parts"]["val"] == {"name": "validation", "count": 3}
    stored = {f for f in m["files"] if f.endswith((".parquet", ".arrow"))}
    assert stored and all(m["files"][f]["sha256"] == hashlib.sha256((root / f).read_bytes()).hexdigest()
                          for f in stored)
    x, y = open_task(m, "trainval", 16).tensors
    assert x.shape == (13, 3, 16, 16) and y.tolist() == [i % 3 for i in range(10)] + [i % 3 for i in range(3)]
    reference = write_hf_fixture(tmp_path / "ref", form="dict", image_key="img", label_key="target", n=(10, 4), val=3)
    ref = register(tmp_path, "ref", source="hf", path=str(reference), image_key="img", label_key="target")
    torch.testing.assert_close(open_task(ref, "trainval", 16).tensors[0], x)  # one data set, three forms


def test_fgvc_transform_augments_training_splits_only(tmp_path):
    root = write_imagefolder_fixture(tmp_path / "mine")
    m = register(tmp_path, "mine", source="imagefolder", path=str(root), transform="fgvc")
    train, test = open_task(m, "train", 16), open_task(m, "test", 16)
    assert isinstance(test, torch.utils.data.TensorDataset)  # deterministic: decoded once
    torch.manual_seed(0)
    a = train[0][0]
    b = torch.stack([train[0][0] for _ in range(8)])
    assert not all(torch.equal(a, t) for t in b)  # random crop / flip


def test_fingerprint_sees_added_and_rewritten_files(tmp_path):
    root = write_imagefolder_fixture(tmp_path / "mine")
    before = fingerprint(root)
    assert fingerprint(root) == before
    (root / "test" / "cat" / "extra.png").write_bytes((root / "test" / "cat" / "cat_000.jpg").read_bytes())
    assert fingerprint(root) != before
    assert fingerprint(tmp_path / "nowhere").startswith("missing: ")


def test_dataset_entry_is_validated():
    with pytest.raises(ValueError, match=r"datasets\.mine.*val_frac"):
        CustomDataset.from_config("mine", dict(source="imagefolder", path="/x", val_frac=1.5))
    with pytest.raises(ValueError, match=r"datasets\.mine.*image_key"):
        CustomDataset.from_config("mine", dict(source="imagefolder", path="/x", image_key="img"))
    with pytest.raises(ValueError, match=r"datasets\.mine"):
        CustomDataset.from_config("mine", dict(source="imagefolder", pth="/x"))


# ------------------------------------------------------------------------------------------------
# Bad inputs: one error naming the path, key or record, raised by register_data (before any training)


def _folder(tmp_path, **kw):
    return write_imagefolder_fixture(tmp_path / "mine", **kw)


def no_test_split(tmp_path):
    root = _folder(tmp_path, splits=("train", "val", None), n=(4, 2, 0))
    return dict(source="imagefolder", path=str(root)), f"{root}/test"


def class_in_one_split_only(tmp_path):
    root = _folder(tmp_path)
    (root / "test" / "eel").rename(tmp_path / "eel")
    return dict(source="imagefolder", path=str(root)), f"{root}/training/eel"


def empty_class(tmp_path):
    root = _folder(tmp_path)
    for p in (root / "val" / "dog").rglob("*.*"):
        if p.suffix != ".txt" and p.is_file():
            p.unlink()
    return dict(source="imagefolder", path=str(root)), f"{root}/val/dog"


def corrupt_image(tmp_path):
    root = _folder(tmp_path)
    bad = root / "training" / "cat" / "cat_001.png"
    bad.write_bytes(np.random.default_rng(0).bytes(500))
    return dict(source="imagefolder", path=str(root)), str(bad)


def truncated_image(tmp_path):
    root = _folder(tmp_path)
    bad = root / "test" / "dog" / "dog_000.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # header intact: only a full decode sees it
    with Image.open(bad) as im:
        assert im.size  # the header alone reads fine
    return dict(source="imagefolder", path=str(root)), str(bad)


def missing_folder(tmp_path):
    return dict(source="imagefolder", path=str(tmp_path / "nowhere")), str(tmp_path / "nowhere")


def missing_column(tmp_path):
    root = write_hf_fixture(tmp_path / "hf", image_key="img")
    return dict(source="hf", path=str(root)), "'image'"


def missing_hf_split(tmp_path):
    root = write_hf_fixture(tmp_path / "hf", form="dict")
    import shutil

    shutil.rmtree(root / "test")
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    return dict(source="hf", path=str(root)), "missing test split"


def label_outside_classes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write_hf_fixture(tmp_path / "hf", form="parquet")
    table = pq.read_table(root / "train.parquet")
    labels = table.column("label").to_pylist()
    labels[5] = 7
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int64()))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(root / "train.parquet").metadata),
                   root / "train.parquet")
    return dict(source="hf", path=str(root)), "split 'train' row 5 column 'label' = 7"


def truncated_hf_image(tmp_path):
    from datasets import load_from_disk

    root = write_hf_fixture(tmp_path / "hf", form="per_split")
    ds = load_from_disk(str(root / "test"))
    rows = ds.cast_column("image", __import__("datasets").Image(decode=False)).to_list()
    rows[2]["image"] = {"bytes": rows[2]["image"]["bytes"][:60], "path": None}
    bad = __import__("datasets").Dataset.from_list(rows, features=ds.features)
    import shutil

    shutil.rmtree(root / "test")
    bad.save_to_disk(str(root / "test"))
    return dict(source="hf", path=str(root)), "split 'test' row 2 column 'image'"


def label_not_classlabel(tmp_path):
    from datasets import Value, load_from_disk

    root = write_hf_fixture(tmp_path / "hf", form="dict")
    dd = load_from_disk(str(root)).cast_column("label", Value("int64"))
    dd.save_to_disk(str(tmp_path / "plain"))
    return dict(source="hf", path=str(tmp_path / "plain")), "column 'label' is Value"


BAD = [no_test_split, class_in_one_split_only, empty_class, corrupt_image, truncated_image, missing_folder,
       missing_column, missing_hf_split, label_outside_classes, truncated_hf_image, label_not_classlabel]


@pytest.mark.parametrize("provoke", BAD, ids=[f.__name__ for f in BAD])
def test_bad_input_is_one_error_naming_the_culprit(provoke, tmp_path):
    dataset, culprit = provoke(tmp_path)
    out = tmp_path / "results" / "bad" / "manifest.json"
    with pytest.raises((ValueError, OSError)) as err:
        register_task(out, "custom/bad", None, dataset)
    assert culprit in str(err.value), str(err.value)
    assert not out.exists()
