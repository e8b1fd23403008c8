"""The two recorded input-transform choices of spec §8: normalisation (config ``data.normalize``:
ImageNet mean/std, or the anchors' own timm mean/std) and the FGVC resize interpolation (config
``data.fgvc_interpolation``), from the transforms through ``open_split`` and ``open_task`` to the
workflow's rules, scripts and schema."""

import ast
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms

from esta.vit import data
from esta.vit.build import open_task, write_manifest
from esta.vit.data import (FGVC_INTERPOLATIONS, IMAGENET_MEAN_STD, NORMALIZE, describe_transform, eval_transform,
                           normalization, open_split)
from fixtures import write_fgvc_fixture, write_vtab_fixture

ROOT = Path(__file__).resolve().parents[1]
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _unnormalised(folder, split, size, num_classes=47):
    """The split's images as [0, 1] tensors, resized exactly as eval_transform does."""
    ds = data.VtabFolder(folder, split, num_classes, eval_transform(size, normalize=False))
    return torch.stack([ds[i][0] for i in range(len(ds))])


def _normalised(raw, mean_std):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    return (raw - mean) / std


# ---- which mean/std -----------------------------------------------------------------------------

def test_normalization_imagenet_and_the_anchors_timm_cfg():
    assert normalization("imagenet") == normalization() == IMAGENET_MEAN_STD
    assert IMAGENET_MEAN_STD == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # augreg_in21k ViTs were trained on [-1, 1] inputs; DeiT on ImageNet statistics
    assert normalization("anchor", "vit-ti-s-b") == HALF
    assert normalization("anchor", "vit-ti-s-b@32") == HALF  # resolution does not change the cfg
    assert normalization("anchor", "deit-ti-s-b") == IMAGENET_MEAN_STD
    assert normalization("anchor", "embedded") == HALF  # vit_tiny_patch16_224's default cfg


def test_normalization_errors_name_the_key():
    with pytest.raises(ValueError, match="data.normalize 'inception'"):
        normalization("inception")
    with pytest.raises(ValueError, match="anchor family.*config key family"):
        normalization("anchor")
    with pytest.raises(ValueError, match="unknown anchor family 'no-such'"):
        normalization("anchor", "no-such")
    with pytest.raises(ValueError, match="data.fgvc_interpolation 'nearest'"):
        describe_transform(fgvc_interpolation="nearest")
    with pytest.raises(ValueError, match="data.fgvc_interpolation 'lanczos'"):
        open_split(ROOT, "vtab/dtd", "test", 32, fgvc_interpolation="lanczos")  # fails before any file is read


def test_describe_transform_is_what_artifacts_record():
    assert describe_transform("anchor", "vit-ti-s-b", "bilinear") == dict(
        normalize="anchor", mean=[0.5] * 3, std=[0.5] * 3, fgvc_interpolation="bilinear")
    assert describe_transform() == dict(normalize="imagenet", mean=list(IMAGENET_MEAN_STD[0]),
                                        std=list(IMAGENET_MEAN_STD[1]), fgvc_interpolation="bicubic")


# ---- threaded through open_split and open_task --------------------------------------------------

def test_open_split_normalises_as_asked(tmp_path):
    folder = write_vtab_fixture(tmp_path, names=("dtd",), n=(4, 2, 3))[0]
    raw = _unnormalised(folder, "test", 24)
    for kwargs, mean_std in ((dict(), IMAGENET_MEAN_STD), (dict(normalize="imagenet"), IMAGENET_MEAN_STD),
                             (dict(normalize="anchor", family="vit-ti-s-b"), HALF)):
        ds = open_split(folder, "vtab/dtd", "test", 24, **kwargs)
        got = torch.stack([ds[i][0] for i in range(len(ds))])
        torch.testing.assert_close(got, _normalised(raw, mean_std))


def test_open_task_threads_normalize_for_table_tasks_and_the_upstream_set(tmp_path):
    folder = write_vtab_fixture(tmp_path / "data", names=("dtd",), n=(4, 2, 3))[0]
    tasks = {"vtab/dtd": (folder, "test"), "upstream": (folder, "train800")}  # upstream: any VTAB-layout folder
    for task, (root, split) in tasks.items():
        manifest = write_manifest(tmp_path / task / "manifest.json", root, task, 47)
        raw = _unnormalised(folder, split, 16)
        for num_workers in (0, 2):  # in-memory decode with and without DataLoader workers
            half = open_task(manifest, split, 16, num_workers, normalize="anchor", family="embedded")
            torch.testing.assert_close(half.tensors[0], _normalised(raw, HALF))
        default = open_task(manifest, split, 16)
        torch.testing.assert_close(default.tensors[0], _normalised(raw, IMAGENET_MEAN_STD))


def test_fgvc_interpolation_bilinear_is_vpts_resize(tmp_path):
    folder = write_fgvc_fixture(tmp_path)
    opened = {m: open_split(folder, "fgvc/oxford_flowers", "test", 32, fgvc_interpolation=m)
              for m in FGVC_INTERPOLATIONS}
    default = open_split(folder, "fgvc/oxford_flowers", "test", 32)
    for i in range(len(default)):
        torch.testing.assert_close(default[i][0], opened["bicubic"][i][0])
        with Image.open(opened["bilinear"].paths[i]) as im:
            img = im.convert("RGB")
        vpt = transforms.Compose([transforms.Resize(round(32 * 256 / 224), transforms.InterpolationMode.BILINEAR),
                                  transforms.CenterCrop(32), transforms.ToTensor(),
                                  transforms.Normalize(*IMAGENET_MEAN_STD)])
        torch.testing.assert_close(opened["bilinear"][i][0], vpt(img))
    # the fixture's images are 9-16 px, so upscaling to 37 px differs between the two kernels
    assert any(not torch.allclose(default[i][0], opened["bilinear"][i][0]) for i in range(len(default)))
    # the FGVC setting leaves VTAB-1k alone: its resize is always bicubic
    vtab = write_vtab_fixture(tmp_path, names=("dtd",), n=(1, 1, 2))[0]
    a, b = (open_split(vtab, "vtab/dtd", "test", 24, fgvc_interpolation=m)[0][0] for m in FGVC_INTERPOLATIONS)
    assert torch.equal(a, b)


# ---- the workflow: schema, configs, every job that opens data ------------------------------------

def _schema_data():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return schema["properties"]["data"]


def test_schema_enums_are_the_codes_choices_and_every_config_sets_them():
    props = _schema_data()["properties"]
    assert props["normalize"]["enum"] == list(NORMALIZE)
    assert props["fgvc_interpolation"]["enum"] == list(FGVC_INTERPOLATIONS)
    assert {"normalize", "fgvc_interpolation"} <= set(_schema_data()["required"])
    for config in [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))]:
        d = yaml.safe_load(config.read_text())["data"]
        assert (d["normalize"], d["fgvc_interpolation"]) == ("imagenet", "bicubic"), config.name


def test_schema_rejects_bad_values_naming_the_key():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    for key, bad in (("normalize", "zero_one"), ("fgvc_interpolation", "nearest")):
        broken = dict(config, data=dict(config["data"], **{key: bad}))
        with pytest.raises(WorkflowError, match=f"(?s){bad}.*{key}|{key}.*{bad}"):
            validate(broken, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))


def _open_task_calls(script: Path):
    tree = ast.parse(script.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "open_task"]


def _rules_running(script: str) -> dict[str, str]:
    """{rule name: rule text} of every rule in workflow/rules whose script is ``script``."""
    out = {}
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            m = re.match(r"rule (\w+):", block)
            if m and f'"../scripts/{script}"' in block:
                out[m.group(1)] = block
    return out


def test_every_script_that_opens_data_passes_the_transform_options_from_its_rule():
    scripts = {p: _open_task_calls(p) for p in sorted((ROOT / "workflow" / "scripts").glob("*.py"))}
    scripts = {p: calls for p, calls in scripts.items() if calls}
    assert len(scripts) >= 7  # train, train_anchor, ls_init, select_esta, grad_interference, evaluate_*
    for script, calls in scripts.items():
        for call in calls:
            kw = {k.arg for k in call.keywords}
            splat = None in kw  # open_task(..., **tf)
            assert splat or {"normalize", "family", "fgvc_interpolation"} <= kw, \
                f"{script.name}:{call.lineno}: open_task without normalize / family / fgvc_interpolation"
        rules = _rules_running(script.name)
        assert rules, f"no rule runs {script.name}"
        for name, text in rules.items():
            for key in ("normalize", "fgvc_interpolation"):
                assert f'{key}=config["data"]["{key}"]' in text, f"rule {name} lacks param {key}"
