"""Tests of the task table, the VTAB-1k layout reader/writer and the embedded suite (spec §8)."""

import re
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from esta import data, embedded
from esta.data import TASKS, VtabFolder, eval_transform, load_tensors, task_info, write_vtab_task

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


def test_unknown_task_and_mode_fail_with_name():
    with pytest.raises(ValueError, match="vtab/no_such_task") as e:
        task_info("vtab/no_such_task")
    assert "vtab/dtd" in str(e.value)
    with pytest.raises(ValueError, match="warmup"):
        data.split_files("warmup")
    assert data.split_files("tuning") == ("train800", "val200")
    assert data.split_files("final") == ("train800val200", "test")


def test_taskinfo_validates():
    with pytest.raises(ValueError, match="num_classes"):
        data.TaskInfo("x/y", "x", "y", 1, "Natural")
    with pytest.raises(ValueError, match="Nature"):
        data.TaskInfo("x/y", "x", "y", 3, "Nature")


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
    out = embedded.make_upstream(tmp_path / "up", seed=0, n_classes=6, n_per_class=3, n_val_per_class=2)
    again = embedded.make_upstream(tmp_path / "up2", seed=0, n_classes=6, n_per_class=3, n_val_per_class=2)
    assert _files(out) == _files(again)
    train = VtabFolder(out, "train", 6, eval_transform(32))
    assert sorted(train.labels) == sorted(list(range(6)) * 3)
    assert len(VtabFolder(out, "val", 6, eval_transform(32))) == 12
    with pytest.raises(ValueError, match="n_classes"):
        embedded.make_upstream(tmp_path / "bad", seed=0, n_classes=10_000)


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


def test_open_split_reads_suite_layout(tmp_path):
    embedded.make_task("sprite_ori", tmp_path / "embedded" / "sprite_ori", seed=0, n_train=16, n_val=8, n_test=8)
    ds = data.open_split(tmp_path, "embedded/sprite_ori", "val200", img_size=24)
    assert len(ds) == 8 and ds[0][0].shape == (3, 24, 24)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "vtab" / "dtd" / "test.txt"))):
        data.open_split(tmp_path, "vtab/dtd", "test", img_size=32)
    with pytest.raises(ValueError, match="fgvc/cub"):
        data.open_split(tmp_path, "fgvc/cub", "test", img_size=32)
