"""Tests of the task table, the three on-disk formats (VTAB-1k, FGVC, CIFAR-100), their splits and
checks, the embedded suite and the fixture writers (spec §8)."""

import codecs
import hashlib
import json
import os
import pickle
import pickletools
import re
import shutil
import socket
import struct

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from esta.vit import data, embedded, upstream
from esta.vit.data.cifar import CIFAR_PICKLE_GLOBALS
from esta.vit.data import (TASKS, VtabFolder, check_task, eval_transform, load_tensors, mode_splits, open_split,
                       task_info, write_vtab_task)
from fixtures import (fgvc_class_ids, write_cifar100_fixture, write_fgvc_fixture, write_vit_weights,
                      write_vtab_fixture)

LINE = re.compile(r"^images/(train800|val200|test)/\d{6}\.jpg (\d+)$")
SMALL = dict(n_train=48, n_val=16, n_test=32)  # 48 = 3 x 16, so every class of every task fits in train800


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _random_task(tmp_path, labels=(0, 1, 2, 1), num_classes=3, name="task"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (len(labels), 8, 8, 3), dtype=np.uint8)
    return write_vtab_task(tmp_path / name, {"train800": (images, np.array(labels))}, num_classes)


# ---- task table ---------------------------------------------------------------------------------

def test_task_table_matches_spec():
    vtab = {"cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
            "svhn": 10, "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
            "diabetic_retinopathy": 5, "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4,
            "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18, "smallnorb_ele": 9}
    fgvc = {"cub": 200, "nabirds": 555, "oxford_flowers": 102, "stanford_dogs": 120, "stanford_cars": 196}
    got = {t.task_id: t.num_classes for t in TASKS.values() if t.suite in ("vtab", "fgvc", "cifar")}
    assert got == {**{f"vtab/{k}": v for k, v in vtab.items()}, **{f"fgvc/{k}": v for k, v in fgvc.items()},
                   "cifar100": 100}
    groups = {g: sorted(t.name for t in TASKS.values() if t.suite == "vtab" and t.group == g)
              for g in ("Natural", "Specialized", "Structured")}
    assert [len(groups[g]) for g in groups] == [7, 4, 8]
    assert groups["Specialized"] == ["diabetic_retinopathy", "eurosat", "patch_camelyon", "resisc45"]
    assert {t.group for t in TASKS.values() if t.suite == "fgvc"} == {"FGVC"}
    assert task_info("cifar100").group == "Natural"
    assert task_info("vtab/oxford_flowers102") != task_info("fgvc/oxford_flowers")


def test_embedded_table_consistent():
    rows = {t.name: (t.group, t.num_classes) for t in TASKS.values() if t.suite == "embedded"}
    assert rows == embedded.EMBEDDED
    assert len(rows) >= 6 and {g for g, _ in rows.values()} == {"Natural", "Specialized", "Structured"}


def test_unknown_task_fails_with_name():
    with pytest.raises(ValueError, match="vtab/no_such_task") as e:
        task_info("vtab/no_such_task")
    assert "vtab/dtd" in str(e.value)


def test_taskinfo_validates():
    with pytest.raises(ValueError, match="num_classes"):
        data.TaskInfo("x/y", "x", "y", 1, "Natural")
    with pytest.raises(ValueError, match="Nature"):
        data.TaskInfo("x/y", "x", "y", 3, "Nature")
    with pytest.raises(ValueError, match="folder"):
        data.TaskInfo("x/y", "x", "y", 3, "Natural", folder="../y")
    assert data.TaskInfo("x/y", "x", "y", 3, "Natural").folder == "x/y"


# ---- embedded suite -----------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    # drop cached sources so this test really reads them with the network blocked
    for loader in (embedded._photo, embedded._digits, embedded._mnist):
        loader.cache_clear()


@pytest.mark.parametrize("name", sorted(embedded.EMBEDDED))
def test_make_task_deterministic_offline_and_well_formed(tmp_path, no_network, name):
    a = embedded.make_task(name, tmp_path / "a", seed=3, **SMALL)
    b = embedded.make_task(name, tmp_path / "b", seed=3, **SMALL)
    c = embedded.make_task(name, tmp_path / "c", seed=4, **SMALL)
    assert _files(a) == _files(b)
    assert _files(a) != _files(c)
    assert sorted(p.name for p in a.glob("*.txt")) == sorted(data.VTAB_LIST_FILES)
    assert not list(tmp_path.glob("*.tmp-*"))
    num_classes = embedded.EMBEDDED[name][1]
    lines = {}
    for split in ("train800", "val200", "test"):
        lines[split] = (a / f"{split}.txt").read_text().splitlines()
        matches = [LINE.match(line) for line in lines[split]]
        assert all(m and m.group(1) == split for m in matches), lines[split][:3]
        labels = [int(m.group(2)) for m in matches]
        assert len(labels) == SMALL[{"train800": "n_train", "val200": "n_val", "test": "n_test"}[split]]
        assert max(labels) < num_classes
        counts = np.bincount(labels, minlength=num_classes)
        assert counts.max() - counts.min() <= 1  # class-balanced
        assert split != "train800" or counts.min() > 0  # every class is in train800
    assert (a / "train800val200.txt").read_text().splitlines() == lines["train800"] + lines["val200"]
    with Image.open(a / "images/test/000000.jpg") as im:
        assert (im.mode, im.size) == ("RGB", (32, 32))


def test_make_task_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="imagenet"):
        embedded.make_task("imagenet", tmp_path, seed=0)


def test_labels_carry_signal():
    """Logistic regression on raw pixels of digits beats chance (0.1) by far on the test split."""
    from sklearn.linear_model import LogisticRegression

    rng = embedded._rng(0, "digits")
    y_train, y_test = np.resize(np.arange(10), 400), np.resize(np.arange(10), 200)
    x = embedded._gen_digits(rng, np.concatenate([y_train, y_test])).reshape(600, -1)[:, ::3] / 255.0
    acc = LogisticRegression(max_iter=200, C=0.1).fit(x[:400], y_train).score(x[400:], y_test)
    assert acc > 0.3


def test_make_upstream_small(tmp_path, no_network):
    out = upstream.make_upstream(tmp_path / "up", seed=0, n_classes=6, n_per_class=3, n_val_per_class=2)
    again = upstream.make_upstream(tmp_path / "up2", seed=0, n_classes=6, n_per_class=3, n_val_per_class=2)
    assert _files(out) == _files(again)
    train = VtabFolder(out, "train", 6, eval_transform(32))
    assert sorted(train.labels) == sorted(list(range(6)) * 3)
    assert len(VtabFolder(out, "val", 6, eval_transform(32))) == 12
    with pytest.raises(ValueError, match="n_classes"):
        upstream.make_upstream(tmp_path / "bad", seed=0, n_classes=10_000)


# ---- VTAB-1k reader and writer ------------------------------------------------------------------

def test_vtab_folder_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    # smooth images, so JPEG q95 reproduces them closely
    images = np.repeat(rng.integers(0, 256, (6, 1, 1, 3), dtype=np.uint8), 16, axis=1).repeat(16, axis=2)
    labels = np.array([4, 0, 2, 2, 1, 3])
    folder = write_vtab_task(tmp_path / "t", {"train800": (images, labels), "val200": (images[:2], labels[:2])}, 5)
    ds = VtabFolder(folder, "train800", 5, eval_transform(16, normalize=False))
    assert ds.labels == labels.tolist()
    x, y = load_tensors(ds, batch_size=4)
    assert x.dtype == torch.float32 and x.shape == (6, 3, 16, 16) and y.tolist() == labels.tolist()
    assert torch.allclose(x, torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0, atol=0.03)
    both = VtabFolder(folder, "train800val200", 5, eval_transform(16))
    assert both.labels == labels.tolist() + labels[:2].tolist()


def test_write_vtab_task_replaces_stale_folder_and_validates(tmp_path):
    stale = tmp_path / "task"
    stale.mkdir()
    (stale / "leftover.txt").write_text("old")
    _random_task(tmp_path)
    assert not (stale / "leftover.txt").exists() and (stale / "train800.txt").is_file()
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(ValueError, match="train800"):
        _random_task(tmp_path, labels=(0, 1, 3, 1), name="bad")
    assert not (tmp_path / "bad").exists()


def test_missing_list_file_names_path_and_layout(tmp_path):
    folder = _random_task(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        VtabFolder(folder, "test", 3, eval_transform(32))
    assert str(folder / "test.txt") in str(e.value)
    assert "train800val200.txt" in str(e.value) and "<label>" in str(e.value)


def test_bad_label_and_malformed_line_name_file_and_line(tmp_path):
    folder = _random_task(tmp_path)
    list_file = folder / "train800.txt"
    lines = list_file.read_text().splitlines()
    list_file.write_text("\n".join([lines[0], lines[1].replace(" 1", " 7")] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{list_file}:2") + ".*label 7"):
        VtabFolder(folder, "train800", 3, eval_transform(32))
    list_file.write_text("\n".join(lines[:2] + ["images/train800/000002.jpg"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{list_file}:3")):
        VtabFolder(folder, "train800", 3, eval_transform(32))


def test_missing_and_unreadable_images_name_path(tmp_path):
    folder = _random_task(tmp_path)
    missing = folder / "images/train800/000003.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        VtabFolder(folder, "train800", 3, eval_transform(32))
    missing.write_bytes(b"not a jpeg")
    ds = VtabFolder(folder, "train800", 3, eval_transform(32))
    with pytest.raises(OSError, match=re.escape(str(missing))):
        ds[3]


def test_any_image_mode_and_size_becomes_rgb(tmp_path):
    folder = tmp_path / "modes"
    (folder / "images/test").mkdir(parents=True)
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (17, 45, 3), dtype=np.uint8))
    variants = {"cmyk.jpg": rgb.convert("CMYK"), "grey.jpg": rgb.convert("L"), "palette.png": rgb.convert("P"),
                "alpha.png": rgb.convert("RGBA"), "odd.jpg": rgb}
    for filename, img in variants.items():
        img.save(folder / "images/test" / filename)
    (folder / "test.txt").write_text("".join(f"images/test/{f} {i}\n" for i, f in enumerate(variants)))
    ds = VtabFolder(folder, "test", len(variants), eval_transform(32))
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y == i


# ---- data root layout, splits -------------------------------------------------------------------

def test_task_folders_follow_the_data_root_layout(tmp_path):
    fgvc = {t.name: (t.folder, t.image_dir) for t in TASKS.values() if t.suite == "fgvc"}
    assert fgvc == {"cub": ("fgvc/CUB_200_2011", "images"), "nabirds": ("fgvc/nabirds", "images"),
                    "oxford_flowers": ("fgvc/OxfordFlower", ""), "stanford_dogs": ("fgvc/Stanford-dogs", "Images"),
                    "stanford_cars": ("fgvc/Stanford-cars", "")}
    for t in TASKS.values():
        expected = {"vtab": f"vtab-1k/{t.name}", "embedded": f"embedded/{t.name}", "cifar": "cifar100"}
        assert t.folder == expected.get(t.suite, t.folder)
        assert t.suite == "fgvc" or t.image_dir == ""
    assert data.task_path(tmp_path, "vtab/dtd") == tmp_path / "vtab-1k" / "dtd"
    for folder in ["vtab-1k/<name>/", "cifar100/cifar-100-python/", "embedded/<name>/"] + [f + "/" for f, _ in
                                                                                        fgvc.values()]:
        assert folder in data.DATA_ROOT_LAYOUT


@pytest.mark.parametrize("task_id,tuning,final", [
    ("vtab/dtd", ("train800", "val200"), ("train800val200", "test")),
    ("embedded/digits", ("train800", "val200"), ("train800val200", "test")),
    ("fgvc/cub", ("train", "val"), ("trainval", "test")),
    ("cifar100", ("train90", "val10"), ("train", "test")),
])
def test_mode_splits_per_suite(task_id, tuning, final):
    assert mode_splits(task_id, "tuning") == tuning and mode_splits(task_id, "final") == final
    assert set(tuning + final) <= set(data.task_splits(task_id))
    with pytest.raises(ValueError, match="'warmup'.*'tuning', 'final'"):
        mode_splits(task_id, "warmup")
    # only FGVC training splits are augmented (so everything else may be cached in RAM)
    assert [data.augmented(task_id, s) for s in tuning + final] == [task_id == "fgvc/cub", False] * 2


def test_cifar_val_indices_partition_reproducibly():
    train90, val10 = data.cifar_val_indices(50_000)
    assert len(val10) == 5000 and len(train90) == 45_000
    assert not set(train90) & set(val10) and sorted(train90 + val10) == list(range(50_000))
    assert data.cifar_val_indices(50_000) == (train90, val10)
    assert val10 != list(range(5000)) and val10 != data.cifar_val_indices(50_000, seed=1)[1]
    assert len(data.cifar_val_indices(205)[1]) == round(20.5)  # Python rounds half to even: 20
    with pytest.raises(ValueError, match="3 images"):
        data.cifar_val_indices(3)


# ---- round trips through the three formats ------------------------------------------------------

def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_files_described(report, folder, names):
    assert sorted(report["files"]) == sorted(names)
    for name in names:
        assert report["files"][name] == {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}


def test_vtab_fixture_round_trip(tmp_path):
    folders = write_vtab_fixture(tmp_path, names=("dtd", "eurosat"), n=(8, 4, 6))
    assert folders == [tmp_path / "vtab-1k/dtd", tmp_path / "vtab-1k/eurosat"]
    modes, sizes = set(), set()
    for path in sorted(folders[0].rglob("images/*/*")):
        with Image.open(path) as im:
            modes.add(im.mode)
            sizes.add(im.size)
    assert modes == {"L", "RGB", "CMYK", "P"} and len(sizes) == 3
    report = check_task(folders[0], "vtab/dtd")
    assert report["task"] == "vtab/dtd" and report["suite"] == "vtab" and report["num_classes"] == 47
    assert report["splits"] == {"train800": 8, "val200": 4, "train800val200": 12, "test": 6}
    _assert_files_described(report, folders[0], data.VTAB_LIST_FILES)
    for split in data.task_splits("vtab/dtd"):
        ds = open_split(folders[0], "vtab/dtd", split, img_size=24)
        lines = (folders[0] / f"{split}.txt").read_text().splitlines()
        assert len(ds) == len(lines) == report["splits"][split]
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 24, 24) and y == int(lines[i].split()[1])
    # the reader is told the task folder, never the suite parent
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "vtab-1k"))):
        open_split(tmp_path / "vtab-1k", "vtab/dtd", "test", img_size=24)


def test_fgvc_fixture_round_trip_remaps_sorted_ids(tmp_path):
    folder = write_fgvc_fixture(tmp_path, "oxford_flowers")
    assert folder == tmp_path / "fgvc/OxfordFlower"
    files = {s: json.loads((folder / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    ids = sorted({c for f in files.values() for c in f.values()})
    assert ids == fgvc_class_ids(102) and len(ids) == 102 and ids[0] == 1 and ids[-1] > 102
    assert list(files["train"].values()) != ids  # files list ids unsorted, so the order of first sight is wrong
    report = check_task(folder, "fgvc/oxford_flowers")
    assert report["splits"] == {"train": 102, "val": 6, "trainval": 108, "test": 8}
    _assert_files_described(report, folder, data.FGVC_JSON_FILES)
    opened = {s: open_split(folder, "fgvc/oxford_flowers", s, img_size=32) for s in data.task_splits(report["task"])}
    for split, ds in opened.items():
        assert isinstance(ds, data.FgvcJson) and ds.class_ids == ids and len(ds) == report["splits"][split]
        entries = {**files["train"], **files["val"]} if split == "trainval" else files[split]
        assert dict(zip(ds.keys, ds.labels, strict=True)) == {k: ids.index(c) for k, c in entries.items()}
    assert set(opened["trainval"].keys) == set(files["train"]) | set(files["val"])
    assert sorted(opened["train"].labels) == list(range(102))
    x, y = opened["test"][0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    # the image root of the table is honoured
    dogs = write_fgvc_fixture(tmp_path, "stanford_dogs", n_val=2, n_test=2)
    key = next(iter(json.loads((dogs / "test.json").read_text())))
    assert (dogs / "Images" / key).is_file() and "/" in key
    assert check_task(dogs, "fgvc/stanford_dogs")["splits"]["test"] == 2


def test_fgvc_augments_training_splits_only(tmp_path):
    folder = write_fgvc_fixture(tmp_path, "oxford_flowers")
    torch.manual_seed(0)

    def reads_differ(ds, n=8):
        return [not torch.equal(ds[i][0], ds[i][0]) for i in range(n)]

    for split in ("train", "trainval"):
        assert any(reads_differ(open_split(folder, "fgvc/oxford_flowers", split, img_size=32)))
        assert not any(reads_differ(open_split(folder, "fgvc/oxford_flowers", split, 32, augment=False)))
    for split in ("val", "test"):
        assert not any(reads_differ(open_split(folder, "fgvc/oxford_flowers", split, img_size=32), n=6))
    # augmented and eval transforms agree on size and normalisation scale
    a = open_split(folder, "fgvc/oxford_flowers", "train", 32)[0][0]
    b = open_split(folder, "fgvc/oxford_flowers", "train", 32, augment=False)[0][0]
    assert a.shape == b.shape == (3, 32, 32) and abs(a.mean() - b.mean()) < 0.5
    with pytest.raises(ValueError, match="augmentation"):
        open_split(write_vtab_fixture(tmp_path, names=("dtd",), n=(1, 1, 1))[0], "vtab/dtd", "test", 32, augment=True)


def test_cifar100_fixture_round_trip(tmp_path):
    folder = write_cifar100_fixture(tmp_path, n_train=200, n_test=50)
    assert folder == tmp_path / "cifar100"
    with open(folder / "cifar-100-python/train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    report = check_task(folder, "cifar100")
    assert report["splits"] == {"train": 200, "test": 50, "train90": 180, "val10": 20}
    _assert_files_described(report, folder, ["cifar-100-python/train", "cifar-100-python/test",
                                             "cifar-100-python/meta"])
    train = open_split(folder, "cifar100", "train", img_size=32)
    assert isinstance(train, torchvision.datasets.CIFAR100) and train.targets == raw["fine_labels"]
    assert len(train.classes) == 100
    # row-major CHW rows become the right HWC images
    assert np.array_equal(train.data[7], raw["data"][7].reshape(3, 32, 32).transpose(1, 2, 0))
    x, y = train[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == raw["fine_labels"][7]
    parts = {s: open_split(folder, "cifar100", s, img_size=16) for s in ("train90", "val10")}
    assert all(isinstance(p, torch.utils.data.Subset) for p in parts.values())
    i90, i10 = parts["train90"].indices, parts["val10"].indices
    assert (len(i90), len(i10)) == (180, 20) and not set(i90) & set(i10) and sorted(i90 + i10) == list(range(200))
    assert open_split(folder, "cifar100", "val10", img_size=16).indices == i10
    x, y = parts["val10"][3]
    assert x.shape == (3, 16, 16) and y == raw["fine_labels"][i10[3]]
    assert len(open_split(folder, "cifar100", "test", img_size=32)) == 50


# ---- check_task failures ------------------------------------------------------------------------

def _break_vtab(tmp_path, fault):
    """A VTAB task with one fault; returns (task dir, path the error must name, extra message regex)."""
    folder = write_vtab_fixture(tmp_path, names=("eurosat",), n=(4, 2, 3))[0]
    test_list = folder / "test.txt"
    lines = test_list.read_text().splitlines()
    image = folder / lines[1].split()[0]
    if fault == "missing split file":
        (folder / "val200.txt").unlink()
        return folder, folder / "val200.txt", "train800val200.txt"
    if fault == "listed image absent":
        image.unlink()
        return folder, image, f"{test_list}:2"
    if fault == "random-bytes image":
        image.write_bytes(np.random.default_rng(0).bytes(300))
        return folder, image, f"{test_list}:2"
    if fault == "empty image file":
        image.write_bytes(b"")
        return folder, image, f"{test_list}:2"
    if fault == "label out of range":
        lines[2] = lines[2].split()[0] + " 10"
        test_list.write_text("\n".join(lines) + "\n")
        return folder, test_list, r":3: label 10 outside \[0, 10\)"
    if fault == "malformed line":
        lines[0] = lines[0].split()[0]
        test_list.write_text("\n".join(lines) + "\n")
        return folder, test_list, ":1: malformed"
    raise AssertionError(fault)


@pytest.mark.parametrize("fault", ["missing split file", "listed image absent", "random-bytes image",
                                   "empty image file", "label out of range", "malformed line"])
def test_check_task_names_path_of_vtab_fault(tmp_path, fault):
    folder, path, extra = _break_vtab(tmp_path, fault)
    with pytest.raises((OSError, ValueError)) as e:
        check_task(folder, "vtab/eurosat")
    assert str(path) in str(e.value) and re.search(extra, str(e.value)), str(e.value)


def test_check_task_names_path_of_fgvc_fault(tmp_path):
    folder = write_fgvc_fixture(tmp_path, "oxford_flowers")
    train = json.loads((folder / "train.json").read_text())
    # drop a class id that appears only in train.json: 101 distinct ids instead of 102
    others = set(json.loads((folder / "val.json").read_text()).values()) | set(
        json.loads((folder / "test.json").read_text()).values())
    key = next(k for k, c in train.items() if c not in others)
    (folder / "train.json").write_text(json.dumps({k: c for k, c in train.items() if k != key}))
    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*101 distinct class ids.*102 classes"):
        check_task(folder, "fgvc/oxford_flowers")
    with pytest.raises(ValueError, match="101 distinct"):
        open_split(folder, "fgvc/oxford_flowers", "test", 32)
    (folder / "train.json").write_text(json.dumps(train)[:-5])
    with pytest.raises(ValueError, match=re.escape(str(folder / "train.json")) + ".*malformed JSON.*line 1"):
        check_task(folder, "fgvc/oxford_flowers")
    (folder / "train.json").write_text(json.dumps(train))
    (folder / key).write_bytes(b"\x00" * 64)
    with pytest.raises(OSError, match=re.escape(str(folder / "train.json")) + f".*{re.escape(key)}.*"
                       + re.escape(str(folder / key))):
        check_task(folder, "fgvc/oxford_flowers")
    (folder / key).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / key))):
        check_task(folder, "fgvc/oxford_flowers")
    (folder / "val.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "val.json")) + ".*train.json, val.json"):
        check_task(folder, "fgvc/oxford_flowers")


def test_check_task_names_path_of_cifar_fault(tmp_path):
    folder = write_cifar100_fixture(tmp_path, n_train=20, n_test=10)
    train = folder / "cifar-100-python/train"
    entry = pickle.loads(train.read_bytes(), encoding="latin1")
    entry["fine_labels"][4] = 100
    train.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(train)) + r".*fine_labels\[4\] = 100"):
        check_task(folder, "cifar100")
    entry["fine_labels"][4], entry["data"] = 3, entry["data"].reshape(20, 32, 32, 3)
    train.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(train)) + r".*\(N, 3072\)"):
        check_task(folder, "cifar100")
    train.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=re.escape(str(train))):
        check_task(folder, "cifar100")
    (folder / "cifar-100-python/meta").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "cifar-100-python/meta"))):
        open_split(folder, "cifar100", "test", 32)
    shutil.rmtree(folder / "cifar-100-python")
    with pytest.raises(FileNotFoundError, match=re.escape(str(folder / "cifar-100-python")) +
                       re.escape(r"; expected <task_dir>/cifar-100-python/{train,test,meta}")):
        check_task(folder, "cifar100")



# ---- CIFAR-100 pickles: a restricted unpickler ------------------------------------------------

def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle wrote it (SHORT_BINSTRING / BINSTRING)."""
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _py2_int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    return b"M" + struct.pack("<H", v) if 0 <= v < 65536 else b"J" + struct.pack("<i", v)


def _py2_dict(items: dict) -> bytes:
    """Protocol 2 as Python 2's cPickle wrote the original CIFAR-100 files: str keys / values as
    BINSTRING, int lists, and a uint8 array via numpy.core.multiarray._reconstruct, numpy.ndarray and
    numpy.dtype with numpy's Python 2 state (raw data a BINSTRING)."""
    def value(v):
        if isinstance(v, str):
            return _py2_str(v.encode("latin1"))
        if isinstance(v, list):
            return b"](" + b"".join(value(x) for x in v) + b"e"
        if isinstance(v, int):
            return _py2_int(v)
        assert isinstance(v, np.ndarray) and v.dtype == np.uint8 and v.ndim == 2
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
                + b"\x87R(" + _py2_int(1) + _py2_int(v.shape[0]) + _py2_int(v.shape[1]) + b"\x86"
                + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
                + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
                + b"\x89" + _py2_str(v.tobytes()) + b"tb")
    return b"\x80\x02}(" + b"".join(value(k) + value(v) for k, v in items.items()) + b"u."


def _globals_named(stream: bytes) -> set[str]:
    names, strings = set(), []
    for op, arg, _ in pickletools.genops(stream):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(".".join(strings[-2:]))
        elif isinstance(arg, str):
            strings.append(arg)
    return names


def test_cifar_reads_original_python2_pickles(tmp_path):
    """The original files (Python 2 cPickle) name only numpy.core.multiarray._reconstruct, numpy.ndarray
    and numpy.dtype; the repo's fixture (Python 3, protocol 2) adds _codecs.encode for the raw bytes and
    spells numpy._core under numpy 2. Both load through the restricted unpickler."""
    folder = write_cifar100_fixture(tmp_path / "fixture", n_train=20, n_test=10)
    out = folder / "cifar-100-python"
    fixture_globals = set().union(*(_globals_named((out / f).read_bytes()) for f in ("train", "test", "meta")))
    assert fixture_globals <= set(CIFAR_PICKLE_GLOBALS) and "_codecs.encode" in fixture_globals
    assert check_task(folder, "cifar100")["splits"]["train"] == 20

    py2 = task_info("cifar100").folder
    py2_out = tmp_path / "py2" / py2 / "cifar-100-python"
    py2_out.mkdir(parents=True)
    raw = {}
    for split in ("train", "test"):
        raw[split] = pickle.loads((out / split).read_bytes(), encoding="latin1")
        entry = {k: raw[split][k] for k in ("filenames", "batch_label", "fine_labels", "coarse_labels", "data")}
        (py2_out / split).write_bytes(_py2_dict(entry))
    (py2_out / "meta").write_bytes(_py2_dict(pickle.loads((out / "meta").read_bytes(), encoding="latin1")))
    stream = (py2_out / "train").read_bytes()
    assert _globals_named(stream) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    assert _globals_named((py2_out / "meta").read_bytes()) == set()
    assert check_task(py2_out.parent, "cifar100")["splits"] == {"train": 20, "test": 10, "train90": 18, "val10": 2}
    train = open_split(py2_out.parent, "cifar100", "train", img_size=32)
    assert np.array_equal(train.data, data.Cifar100Folder(folder).data)
    assert train.targets == raw["train"]["fine_labels"] and train.classes[3] == "fine_03"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_accepts_repacked_copies(tmp_path, protocol):
    """A copy re-pickled under Python 3 / numpy 2, with any protocol and numpy int labels, still loads."""
    folder = write_cifar100_fixture(tmp_path, n_train=20, n_test=10)
    entries = {}
    for split in ("train", "test", "meta"):
        path = folder / "cifar-100-python" / split
        entries[split] = pickle.loads(path.read_bytes(), encoding="latin1")
        if "fine_labels" in entries[split]:
            entries[split]["fine_labels"] = [np.int64(c) for c in entries[split]["fine_labels"]]
        path.write_bytes(pickle.dumps(entries[split], protocol=protocol))
    assert check_task(folder, "cifar100")["splits"]["test"] == 10
    train = open_split(folder, "cifar100", "train", 32)
    assert train.targets == [int(c) for c in entries["train"]["fine_labels"]]
    assert np.array_equal(train.data[0], entries["train"]["data"][0].reshape(3, 32, 32).transpose(1, 2, 0))


class _Payload:
    """Pickles as ``fn(*args)``: what a tampered file would run under a plain ``pickle.load``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker):
    """(file, pickle bytes that would create ``marker``, the global they name)."""
    return {
        "train os.system": ("train", pickle.dumps(_Payload(os.system, f"touch '{marker}'"), protocol=2),
                            f"{os.system.__module__}.system"),
        "meta open": ("meta", pickle.dumps({"fine_label_names": _Payload(open, str(marker), "w")}),
                      f"{open.__module__}.open"),
        "test nested": ("test", pickle.dumps({"data": np.zeros((1, 3072), np.uint8),
                                              "fine_labels": [0, _Payload(open, str(marker), "w")]}, protocol=0),
                        f"{open.__module__}.open"),
    }


@pytest.mark.parametrize("case", ["train os.system", "meta open", "test nested"])
@pytest.mark.parametrize("entry", ["check_task", "register_data", "open_split"])
def test_cifar_refuses_pickle_that_runs_code(tmp_path, case, entry):
    from esta.vit.build import write_manifest  # what workflow/scripts/register_data.py calls

    # the payload is real: a plain pickle.load would create the file
    probe = tmp_path / "probe"
    pickle.loads(_payloads(probe)[case][1])
    assert probe.exists()

    marker = tmp_path / "pwned"
    name, bad, refused = _payloads(marker)[case]
    folder = write_cifar100_fixture(tmp_path / "data", n_train=20, n_test=10)
    path = folder / "cifar-100-python" / name
    path.write_bytes(bad)
    manifest = tmp_path / "manifest.json"
    with pytest.raises(ValueError) as e:
        if entry == "check_task":
            check_task(folder, "cifar100")
        elif entry == "register_data":  # workflow/scripts/register_data.py checks the task through this
            write_manifest(manifest, folder, "cifar100")
        else:
            open_split(folder, "cifar100", "test" if name == "test" else "train90", 32)
    msg = str(e.value)
    assert msg.startswith(f"{path}: refuses to unpickle global {refused!r}"), msg
    assert "_codecs.encode" in msg and "numpy.core.multiarray._reconstruct" in msg
    assert not marker.exists() and not manifest.exists()


def test_cifar_admits_codecs_encode_only_for_latin1(tmp_path):
    folder = write_cifar100_fixture(tmp_path, n_train=20, n_test=10)
    meta = folder / "cifar-100-python/meta"
    meta.write_bytes(pickle.dumps({"fine_label_names": _Payload(codecs.encode, "x", "rot13")}, protocol=2))
    with pytest.raises(ValueError, match=re.escape(str(meta)) + r": not a pickle.*encode\(str, 'rot13', 'strict'\)"):
        check_task(folder, "cifar100")

def test_check_task_missing_folder_and_unknown_task(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere")) + ".*vtab-1k/dtd/"):
        check_task(tmp_path / "nowhere", "vtab/dtd")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere")) + ".*train.json"):
        open_split(tmp_path / "nowhere", "fgvc/cub", "test", 32)
    with pytest.raises(ValueError, match="'fgvc/cub200'.*fgvc/cub"):
        check_task(tmp_path, "fgvc/cub200")
    with pytest.raises(ValueError, match="'val200'.*'train', 'val', 'trainval', 'test'"):
        open_split(tmp_path, "fgvc/cub", "val200", 32)


# ---- fixture writers ----------------------------------------------------------------------------

def test_fixture_writers_are_deterministic(tmp_path):
    def written(root, seed):
        write_vtab_fixture(root, names=("dtd",), n=(3, 2, 2), seed=seed)
        write_fgvc_fixture(root, "oxford_flowers", seed=seed)
        write_cifar100_fixture(root, n_train=10, n_test=10, seed=seed)
        return _files(root)

    a, b, c = written(tmp_path / "a", 0), written(tmp_path / "b", 0), written(tmp_path / "c", 1)
    assert a == b and a != c
    assert a.keys() - c.keys()  # another seed draws other class ids, so other FGVC paths


def test_write_vit_weights_loads_as_in21k_checkpoint(tmp_path, no_network):
    import timm
    from safetensors.torch import load_file

    (path,) = write_vit_weights(tmp_path, names=("vit_tiny_patch16_224",))
    assert path == tmp_path / "vit_tiny_patch16_224.augreg_in21k.safetensors"
    saved = load_file(path)
    assert saved["head.weight"].shape == (21843, 192)
    torch.manual_seed(12345)  # random init differs from the file's, so equality below means it was loaded
    model = timm.create_model("vit_tiny_patch16_224.augreg_in21k", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=21843))
    state = model.state_dict()
    assert state["head.weight"].shape == (10, 192)
    backbone = [k for k in saved if not k.startswith("head.")]
    assert len(backbone) > 100 and set(backbone) == {k for k in state if not k.startswith("head.")}
    assert all(torch.equal(state[k], saved[k]) for k in backbone)
