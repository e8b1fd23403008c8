"""Input transforms of spec §8 and the two choices the workflow records with its results.

- :func:`eval_transform`: VTAB-1k and CIFAR-100, bicubic resize to (S, S), no augmentation.
- :func:`fgvc_transform`: FGVC, resize 256 / crop 224 (scaled to S), random crop + flip in training.
- :func:`normalization`: the per-channel mean/std of config key ``data.normalize``: ``imagenet``
  (the NOAH/SPT VTAB convention, spec §8 [decision]) or ``anchor`` (the anchors' timm pretrained cfg:
  mean = std = 0.5 for the ``augreg_in21k`` ViTs).
- config key ``data.fgvc_interpolation``: the FGVC resize kernel, bicubic or VPT's bilinear.
- :func:`describe_transform`: both choices and the resolved mean/std, as artifacts record them.
"""

from __future__ import annotations

from typing import Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

# Values of config key data.normalize: "imagenet" is the NOAH/SPT VTAB convention (spec §8
# [decision]); "anchor" is what the anchors' timm pretrained cfg says (0.5 / 0.5 for augreg_in21k).
NORMALIZE = ("imagenet", "anchor")
IMAGENET_MEAN_STD = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
# Values of config key data.fgvc_interpolation: bicubic as timm resizes; VPT's FGVC code resizes bilinearly.
_INTERPOLATION = {"bicubic": transforms.InterpolationMode.BICUBIC,
                  "bilinear": transforms.InterpolationMode.BILINEAR}
FGVC_INTERPOLATIONS = tuple(_INTERPOLATION)


def normalization(normalize: str = "imagenet", family: str | None = None) -> tuple[tuple[float, ...], ...]:
    """(mean, std) per RGB channel that images are normalised with (config key ``data.normalize``).

    ``imagenet``: timm's ImageNet mean/std. ``anchor``: the mean/std of the timm pretrained cfg of
    every anchor of ``family`` (an ``esta.vit.anchors`` family name), read from timm's table of
    configs, never downloaded; the anchors of a family must agree.
    """
    if normalize == "imagenet":
        return IMAGENET_MEAN_STD
    if normalize != "anchor":
        raise ValueError(f"unknown data.normalize {normalize!r}; expected one of {list(NORMALIZE)}")
    if family is None:
        raise ValueError("data.normalize 'anchor' reads the anchors' mean/std, so it needs the anchor family "
                         "(config key family); none was given")
    from timm.models import get_pretrained_cfg

    from esta.vit.anchors import family as family_specs

    found = {}
    for spec in family_specs(family):
        cfg = get_pretrained_cfg(spec.timm_name)
        if cfg is None or cfg.mean is None or cfg.std is None:
            raise ValueError(f"data.normalize 'anchor': timm has no pretrained cfg with mean/std for "
                             f"{spec.timm_name!r} ({spec.name} of family {family!r}); use 'imagenet'")
        found[spec.name] = (tuple(cfg.mean), tuple(cfg.std))
    if len(set(found.values())) != 1:
        raise ValueError(f"data.normalize 'anchor': the anchors of family {family!r} disagree on mean/std "
                         f"{found}; use 'imagenet'")
    return next(iter(found.values()))


def interpolation_mode(name: str) -> transforms.InterpolationMode:
    """The torchvision mode of a ``data.fgvc_interpolation`` value; a bad value names the key."""
    if name not in _INTERPOLATION:
        raise ValueError(f"unknown data.fgvc_interpolation {name!r}; expected one of {list(FGVC_INTERPOLATIONS)}")
    return _INTERPOLATION[name]


def describe_transform(normalize: str = "imagenet", family: str | None = None,
                       fgvc_interpolation: str = "bicubic") -> dict:
    """The input-transform choices as recorded in artifacts: both config values and the resolved
    mean/std, e.g. ``{"normalize": "anchor", "mean": [0.5, 0.5, 0.5], "std": [...], "fgvc_interpolation":
    "bicubic"}``. Fails on a bad value like :func:`open_split` would."""
    mean, std = normalization(normalize, family)
    interpolation_mode(fgvc_interpolation)
    return dict(normalize=normalize, mean=list(mean), std=list(std), fgvc_interpolation=fgvc_interpolation)


def eval_transform(img_size: int, normalize: bool = True, mean_std=IMAGENET_MEAN_STD) -> Callable:
    """VTAB transform of spec §8: bicubic resize to (img_size, img_size), normalised by ``mean_std``
    (default ImageNet mean/std, see :func:`normalization`), no augmentation."""
    steps = [transforms.Resize((img_size, img_size), interpolation=_INTERPOLATION["bicubic"]), transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(*mean_std))
    return transforms.Compose(steps)


def fgvc_transform(img_size: int, train: bool, mean_std=IMAGENET_MEAN_STD, interpolation: str = "bicubic") -> Callable:
    """FGVC transform of spec §8, scaled to ``img_size`` (224 -> resize 256).

    Resize of the shorter side to ``round(img_size * 256 / 224)`` (``interpolation``: bicubic, or VPT's
    bilinear), then a random crop and horizontal flip (``train``) or a centre crop (eval) of
    ``img_size``; normalised by ``mean_std``.
    """
    steps = [transforms.Resize(round(img_size * 256 / 224), interpolation=interpolation_mode(interpolation))]
    if train:
        steps += [transforms.RandomCrop(img_size), transforms.RandomHorizontalFlip()]
    else:
        steps.append(transforms.CenterCrop(img_size))
    steps += [transforms.ToTensor(), transforms.Normalize(*mean_std)]
    return transforms.Compose(steps)
