"""Segmentation data in ADE20K's layout (spec §14, esta.vit.seg_data): the rendered embedded task reads
back through the real loader, every bad case is one error naming the file, the splits are seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from esta.vit.seg_data import DENSE_CLASSES, SegFolder, check_ade20k, split_indices, write_dense_task
from esta.vit.seg import IGNORE

K = len(DENSE_CLASSES)
MEAN_STD = ((0.5,) * 3, (0.5,) * 3)


@pytest.fixture
def task(tmp_path):
    root = tmp_path / "dense"
    write_dense_task(root, 10, 4, 64, seed=0)
    return root


def test_rendered_task_reads_back_with_zero_reduced_and_other_ignored(task):
    desc = check_ade20k(task, K, reduce_zero_label=True)
    assert desc["splits"] == {"training": 10, "validation": 4}
    assert all(c > 0 for c in desc["class_pixels"])  # every class is drawn somewhere
    ann = np.asarray(Image.open(task / "annotations/validation/000000.png"))
    x, y = SegFolder(task, "test", 64, True, MEAN_STD)[0]
    assert x.shape == (3, 64, 64) and y.dtype == torch.int64
    expected = torch.from_numpy(ann.astype(np.int64) - 1)
    expected[expected < 0] = IGNORE  # stored 0 ("other") is ignored, 1..8 become 0..7
    assert torch.equal(y, expected)
    # the same scene is rendered again from the seed
    write_dense_task(task.parent / "again", 10, 4, 64, seed=0)
    assert np.array_equal(np.asarray(Image.open(task.parent / "again/annotations/validation/000000.png")), ann)


def test_train_and_selection_partition_training_by_seed(task):
    a, b = split_indices(10, 0.3, seed=1), split_indices(10, 0.3, seed=2)
    assert sorted(a["train"] + a["selection"]) == list(range(10)) and len(a["selection"]) == 3
    assert a != b and a == split_indices(10, 0.3, seed=1)
    train = SegFolder(task, "train", 64, True, MEAN_STD, selection_fraction=0.3, split_seed=1)
    sel = SegFolder(task, "selection", 64, True, MEAN_STD, selection_fraction=0.3, split_seed=1)
    assert not {p for p, _ in train.pairs} & {p for p, _ in sel.pairs} and len(train) + len(sel) == 10
    assert train.augment and not sel.augment


def test_augmentation_moves_image_and_mask_together(task):
    ds = SegFolder(task, "train", 64, True, MEAN_STD, augment=True)
    torch.manual_seed(4)
    x, y = ds[3]
    plain = SegFolder(task, "train", 64, True, MEAN_STD, augment=False)
    x0, y0 = plain[3]
    assert not torch.equal(y, y0)  # the crop moved the mask...
    # ...and the image with it: sky pixels (class 0) are bluer than grass pixels (class 1) in both
    for img, mask in ((x, y), (x0, y0)):
        assert img[2][mask == 0].mean() > img[2][mask == 1].mean() + 0.5


@pytest.mark.parametrize("case", ["missing", "rgb", "size", "label"])
def test_each_bad_case_is_one_error_naming_the_file(task, case):
    ann = task / "annotations/training/000004.png"
    if case == "missing":
        ann.unlink()
        err, match = FileNotFoundError, "missing annotation"
    elif case == "rgb":
        Image.open(ann).convert("RGB").save(ann)
        err, match = ValueError, "mode RGB"
    elif case == "size":
        Image.open(ann).resize((32, 64)).save(ann)
        err, match = ValueError, "32x64 but its image"
    else:
        a = np.asarray(Image.open(ann)).copy()
        a[5, 5] = K + 1
        Image.fromarray(a, mode="L").save(ann)
        err, match = ValueError, f"label {K + 1} but the task has {K} classes"
    with pytest.raises(err, match=match) as info:
        check_ade20k(task, K, reduce_zero_label=True)
    assert str(ann) in str(info.value)


def test_255_is_ignored_and_a_label_of_classes_is_refused_without_reduce_zero_label(task):
    ann = task / "annotations/validation/000001.png"
    a = np.asarray(Image.open(ann)).copy()
    a[:4] = 255
    Image.fromarray(a, mode="L").save(ann)
    check_ade20k(task, K, reduce_zero_label=True)  # 255 is fine, 8 = the last class under reduce_zero_label
    with pytest.raises(ValueError, match=f"label {K} but"):
        check_ade20k(task, K, reduce_zero_label=False)  # without it 8 is one past the last class
    _, y = SegFolder(task, "test", 64, True, MEAN_STD)[1]
    assert (y[:4] == IGNORE).all()
