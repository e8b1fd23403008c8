"""The task table (ESTA spec §8): canonical task ids, classes, VTAB group and folder of every task.

Kept apart from :mod:`esta.vit.data` (which reads the on-disk formats with torch and torchvision) so
that the workflow's table jobs, which only need a task's classes and group, start in a second instead
of importing torch. :mod:`esta.vit.data` re-exports everything here.

A user's own data set is task ``custom/<name>`` (spec §13, :mod:`esta.vit.data.custom`): it is not in the
table, its classes come from its manifest and its group from config ``datasets.<name>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["GROUPS", "TaskInfo", "TASKS", "task_info", "task_path", "is_relative_inside", "CUSTOM_PREFIX", "is_custom",
           "custom_name", "check_custom_tasks", "task_group", "DEFAULT_GROUP", "DENSE_TASKS", "dense_task",
           "DENSE_PREFIX", "task_kind", "dense_name"]


def is_relative_inside(path: str) -> bool:
    """True for a relative posix path that stays inside its parent ('' counts: the parent itself)."""
    p = PurePosixPath(path)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in path


GROUPS = ("Natural", "Specialized", "Structured", "FGVC")


@dataclass(frozen=True)
class TaskInfo:
    """One row of the task table.

    Args:
        task_id: canonical id, ``<suite>/<name>`` (``cifar100`` for full CIFAR-100).
        suite: ``vtab``, ``fgvc``, ``cifar`` or ``embedded``; decides the on-disk format.
        name: the task's name inside its suite.
        num_classes: number of classes (>= 2).
        group: VTAB group (Natural / Specialized / Structured) or FGVC.
        folder: the task's folder relative to a data root (posix). Empty means ``<suite>/<name>``.
        image_dir: FGVC only: the image root inside ``folder`` that json paths are relative to
            (``""``: the folder itself).
    """

    task_id: str
    suite: str
    name: str
    num_classes: int
    group: str
    folder: str = ""
    image_dir: str = ""

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"task {self.task_id!r}: num_classes must be an int >= 2, got {self.num_classes!r}")
        if self.group not in GROUPS:
            raise ValueError(f"task {self.task_id!r}: group {self.group!r} is not one of {GROUPS}")
        if not self.suite or not self.name or "/" in self.name:
            raise ValueError(f"task {self.task_id!r}: bad suite {self.suite!r} or name {self.name!r}")
        if not self.folder:
            object.__setattr__(self, "folder", f"{self.suite}/{self.name}")
        for field in ("folder", "image_dir"):
            value = getattr(self, field)
            if not is_relative_inside(value):
                raise ValueError(f"task {self.task_id!r}: {field} {value!r} must be a relative posix path "
                                 "without '..'")


# (name, classes) per VTAB-1k group, exactly as spec §8. The folder names of the widely distributed
# VTAB-1k copy equal these names.
_VTAB = {
    "Natural": [("cifar", 100), ("caltech101", 102), ("dtd", 47), ("oxford_flowers102", 102),
                ("oxford_iiit_pet", 37), ("svhn", 10), ("sun397", 397)],
    "Specialized": [("patch_camelyon", 2), ("eurosat", 10), ("resisc45", 45), ("diabetic_retinopathy", 5)],
    "Structured": [("clevr_count", 8), ("clevr_dist", 6), ("dmlab", 6), ("kitti", 4), ("dsprites_loc", 16),
                   ("dsprites_ori", 16), ("smallnorb_azi", 18), ("smallnorb_ele", 9)],
}
# (name, classes, VPT's folder name, image root inside it) per FGVC task, spec §8.
_FGVC = [("cub", 200, "CUB_200_2011", "images"), ("nabirds", 555, "nabirds", "images"),
         ("oxford_flowers", 102, "OxfordFlower", ""), ("stanford_dogs", 120, "Stanford-dogs", "Images"),
         ("stanford_cars", 196, "Stanford-cars", "")]
# The embedded suite (32x32 images generated offline by esta/vit/embedded.py, which holds only the
# generators keyed by these names). Defined here so the table stays one table and this package
# never imports embedded.py (embedded.py imports it for write_vtab_task).
_EMBEDDED = [("digits", "Natural", 10), ("mnist", "Natural", 10), ("textures", "Natural", 10),
             ("medical", "Specialized", 5),
             ("count", "Structured", 6), ("sprite_loc", "Structured", 16), ("sprite_ori", "Structured", 8)]


def _build_tasks() -> dict[str, TaskInfo]:
    rows = [TaskInfo(f"vtab/{n}", "vtab", n, c, g, folder=f"vtab-1k/{n}") for g, items in _VTAB.items()
            for n, c in items]
    rows += [TaskInfo(f"fgvc/{n}", "fgvc", n, c, "FGVC", folder=f"fgvc/{d}", image_dir=i) for n, c, d, i in _FGVC]
    rows.append(TaskInfo("cifar100", "cifar", "cifar100", 100, "Natural", folder="cifar100"))
    rows += [TaskInfo(f"embedded/{n}", "embedded", n, c, g, folder=f"embedded/{n}") for n, g, c in _EMBEDDED]
    return {r.task_id: r for r in rows}


TASKS: dict[str, TaskInfo] = _build_tasks()


CUSTOM_PREFIX = "custom/"


def is_custom(task_id: str) -> bool:
    """Whether ``task_id`` names a user's data set (``custom/<name>``, config ``datasets.<name>``)."""
    return task_id.startswith(CUSTOM_PREFIX)


def custom_name(task_id: str) -> str:
    """The key in config ``datasets`` of custom task ``task_id``."""
    if not is_custom(task_id) or not task_id.removeprefix(CUSTOM_PREFIX):
        raise ValueError(f"{task_id!r} is not a custom task id ('{CUSTOM_PREFIX}<name>')")
    return task_id.removeprefix(CUSTOM_PREFIX)


DEFAULT_GROUP = "Custom"  # the group of a custom task whose config entry names none


def task_group(task_id: str, datasets: dict) -> str:
    """The group tables put ``task_id`` in: its table row's, or for a custom task config
    ``datasets.<name>.group`` (default ``Custom``)."""
    if is_custom(task_id):
        return datasets[custom_name(task_id)].get("group", DEFAULT_GROUP)
    return task_info(task_id).group


def check_custom_tasks(tasks: list[str], datasets: dict) -> None:
    """Every ``custom/<name>`` in config ``tasks`` needs its entry ``datasets.<name>``; an error names
    the missing key and the ones there are."""
    for task in tasks:
        if is_custom(task) and custom_name(task) not in datasets:
            raise ValueError(f"tasks lists {task!r} but config datasets has no entry {custom_name(task)!r} (entries: "
                             f"{sorted(datasets)}); declare it as datasets.{custom_name(task)}: "
                             "{source: imagefolder|hf, path: ...}")


def task_info(task_id: str) -> TaskInfo:
    """The table row of ``task_id``; an unknown id fails with the list of known ids."""
    if is_custom(task_id):
        raise ValueError(f"{task_id!r} is a user's data set, not in the task table: its classes are in its "
                         "manifest (results/data/<task>/manifest.json) and its group in config datasets")
    if task_id not in TASKS:
        raise ValueError(f"unknown task id {task_id!r}; known ids: {', '.join(TASKS)}")
    return TASKS[task_id]


def task_path(data_root: str | os.PathLike, task_id: str) -> Path:
    """The folder of ``task_id`` under ``data_root`` (``<data_root>/<TaskInfo.folder>``)."""
    return Path(data_root) / task_info(task_id).folder


# Dense (segmentation) tasks of config dense.tasks (spec §14, esta.vit.seg_data): classes,
# reduce_zero_label, and the folder under config data_root in ADE20K's layout (None: rendered by the
# workflow, the embedded dense task).
DENSE_TASKS = {
    "shapes": dict(num_classes=8, reduce_zero_label=True, folder=None),
    "ade20k": dict(num_classes=150, reduce_zero_label=True, folder="ADEChallengeData2016"),
}


def dense_task(name: str) -> dict:
    """The row of dense task ``name``; an unknown name lists the known ones."""
    if name not in DENSE_TASKS:
        raise ValueError(f"unknown dense task {name!r} (config dense.tasks); known: {sorted(DENSE_TASKS)}")
    return DENSE_TASKS[name]


DENSE_PREFIX = "dense/"  # a dense task's id in the workflow: dense/<name> (config dense.tasks lists the names)


def task_kind(task_id: str) -> str:
    """``seg`` for a dense task (``dense/<name>``, spec §14), ``cls`` for every other: what a workflow
    script dispatches on, one rule serving both kinds."""
    return "seg" if task_id.startswith(DENSE_PREFIX) else "cls"


def dense_name(task_id: str) -> str:
    """The dense task's name in :data:`DENSE_TASKS` of its id ``dense/<name>``; another id is refused."""
    if task_kind(task_id) != "seg":
        raise ValueError(f"{task_id!r} is not a dense task id ({DENSE_PREFIX}<name>)")
    return task_id.removeprefix(DENSE_PREFIX)
