"""Synthetic upstream sets: ImageNet's role for the embedded anchors (our [decision], spec §8).

Why they exist: the default run pretrains its tiny anchors on nothing downloaded. ImageNet transfers
to VTAB because it covers what the downstream tasks need, not because it is large. The basic set
(``make_upstream``: shape x hue x texture x background recipes) is fine-grained but narrow:
pretraining B-32 on it transferred nothing (issue 11). The rich set (``make_rich_upstream``, the
shipped anchors' recipe) mixes seven groups of classes, each a kind of content the default tasks
use, none of them the downstream images themselves:

- ``glyph``   characters of matplotlib's bundled TrueType fonts (the font is an augmentation, the
              character the class), sometimes degraded to 6-12 px and blown up again, as sklearn's
              8x8 digits are;
- ``count``   1-10 objects of one shape kind (CLEVR-count's kind of content);
- ``pose``    orientation bins of elongated or pointed shapes (dSprites-orientation);
- ``place``   the grid cell holding one small shape (dSprites-location);
- ``photo``   regions of the scikit-image photos reserved for upstream (``_UPSTREAM_BG``): the
              photo and the 3x3 region a crop comes from is the class (texture and natural-image
              statistics; the task photos in ``_TEXTURES``/``_MEDICAL`` are never read);
- ``pattern`` procedural stripes, checkers, dots and smoothed noise at several scales;
- ``object``  the basic set's shape kind x foreground texture, over random colours and backgrounds.

Every image then gets the same photometric augmentation (greyscale, blur by down/up-sampling,
noise), so colour and sharpness are weak cues. A pure function of the seed, like the tasks.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont

from esta.vit.data import write_vtab_task
from esta.vit.embedded import (_KINDS, RES, _balanced_labels, _contrasting_colours, _coverage, _noisy_background,
                               _paint, _photo, _photometric_jitter, _random_crops, _resize, _rng, _to_uint8)

__all__ = ["make_upstream", "GROUPS", "CLASSES", "class_names", "render", "make_rich_upstream"]

# Upstream backgrounds come from other photos than the task sources, so pretraining never sees
# the downstream images.
_UPSTREAM_BG = [("astronaut.png", 0.5), ("rocket.jpg", 0.5), ("motorcycle_left.png", 0.5),
                ("motorcycle_right.png", 0.5), ("color.png", 0.75), ("clock_motion.png", 0.75),
                ("horse.png", 0.5), ("phantom.png", 0.5), ("logo.png", 0.5)]

# Upstream "ImageNet stand-in" for pretraining the tiny anchors.

# A class is a recipe: shape kind x hue x foreground texture x background type. Instances vary
# in position, scale, rotation, aspect, colour, stripe phase/orientation, noise and distractors.
_N_HUES, _N_TEXTURES, _N_BACKGROUNDS = 6, 4, 3


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(n,) hue/saturation/value in [0, 1] -> (n, 3) RGB in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6) % 6
    return 255 * (v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))


def _render_upstream(rng: np.random.Generator, recipe: np.ndarray) -> np.ndarray:
    """uint8 (n, RES, RES, 3) instances of the per-image recipes (n, 4) = (kind, hue, texture, background)."""
    kind, hue, texture, background = recipe.T
    n = len(recipe)
    # background: 0 flat colour + gradient + noise, 1 two-colour gradient, 2 crop of a bundled photo
    img = _noisy_background(rng, n, rng.random(n) < 0.5)
    two = background == 1
    t = np.linspace(0, 1, RES, dtype=np.float32)
    flip = rng.random(int(two.sum())) < 0.5
    ramp = np.where(flip[:, None, None], t[None, :, None], t[None, None, :])  # (m, H, W)
    a, b = rng.uniform(0, 255, (2, int(two.sum()), 1, 1, 3))
    img[two] = a + (b - a) * ramp[..., None] + rng.normal(0, 6, (int(two.sum()), RES, RES, 3))
    photo = background == 2
    img[photo] = _random_crops(rng, _UPSTREAM_BG, rng.integers(0, len(_UPSTREAM_BG), int(photo.sum())), (32, 96))
    # foreground: the class hue (with instance jitter), striped/checkered by the class texture
    colour = _hsv_to_rgb((hue / _N_HUES + rng.normal(0, 0.03, n)) % 1, rng.uniform(0.55, 1, n), rng.uniform(0.6, 1, n))
    phi, phase = rng.uniform(0, np.pi, n), rng.uniform(0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:RES, 0:RES].astype(np.float32)
    along = np.cos(phi)[:, None, None] * xx + np.sin(phi)[:, None, None] * yy  # (n, H, W)
    across = -np.sin(phi)[:, None, None] * xx + np.cos(phi)[:, None, None] * yy
    period = np.array([np.inf, 6.0, 3.0, 5.0])[texture][:, None, None]
    pattern = np.sin(2 * np.pi * along / period + phase[:, None, None]) > 0
    checker = texture == 3
    pattern[checker] ^= np.sin(2 * np.pi * across[checker] / 5.0) > 0
    pattern[texture == 0] = False
    fg = colour[:, None, None, :] * np.where(pattern, 0.45, 1.0)[..., None]
    size = rng.uniform(6, 12, n)
    cov = _coverage(kind, rng.uniform(9, 23, n), rng.uniform(9, 23, n), size, rng.uniform(0, 2 * np.pi, n),
                    rng.uniform(1, 1.6, n))
    img = _paint(img, cov, fg)
    # a small solid distractor of a random kind on a third of the images, may occlude
    d = rng.random(n) < 0.33
    m = int(d.sum())
    cov = _coverage(rng.integers(0, len(_KINDS), m), rng.uniform(3, 29, m), rng.uniform(3, 29, m),
                    rng.uniform(2.5, 4.5, m), rng.uniform(0, 2 * np.pi, m), np.ones(m))
    img[d] = _paint(img[d], cov, rng.uniform(0, 255, (m, 3)))
    return _to_uint8(img + rng.normal(0, 5, img.shape))


def make_upstream(out_dir: str | os.PathLike, seed: int, n_classes: int = 100, n_per_class: int = 100,
                  n_val_per_class: int = 20) -> Path:
    """Write the synthetic upstream set (splits ``train``, ``val``) to ``out_dir`` and return it.

    Each of ``n_classes`` classes is a distinct recipe (shape kind x hue x texture x background)
    drawn without replacement from the 8 * 6 * 4 * 3 = 576 combinations; classes sharing three of
    four attributes make it fine-grained, so it does not saturate and width helps.
    """
    n_recipes = len(_KINDS) * _N_HUES * _N_TEXTURES * _N_BACKGROUNDS
    if not 2 <= n_classes <= n_recipes or n_per_class < 1 or n_val_per_class < 1:
        raise ValueError(f"upstream: need 2 <= n_classes <= {n_recipes} and >= 1 image per class, got "
                         f"n_classes={n_classes}, n_per_class={n_per_class}, n_val_per_class={n_val_per_class}")
    rng = _rng(seed, "upstream")
    recipes = np.stack(np.unravel_index(rng.choice(n_recipes, n_classes, replace=False),
                                        (len(_KINDS), _N_HUES, _N_TEXTURES, _N_BACKGROUNDS)), axis=1)
    splits = {}
    for split, per_class in (("train", n_per_class), ("val", n_val_per_class)):
        labels = _balanced_labels(rng, n_classes * per_class, n_classes)
        # chunks bound the memory of the supersampled coverage (chunk x 64 x 64 floats)
        images = np.concatenate([_render_upstream(rng, recipes[labels[i:i + 2000]])
                                 for i in range(0, len(labels), 2000)])
        splits[split] = (images, labels)
    return write_vtab_task(out_dir, splits, n_classes)


# ---------------------------------------------------------------------------------------------
# The rich upstream set (config/upstream.yaml's recipe for the shipped anchors)

# Characters with distinct shapes: digits, capitals, and the lowercase letters that are not just
# smaller capitals (c o s u v w x z) or a bar (l).
_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abdefghijkmnpqrty"
_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
          "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
          "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf",
          "cmtt10.ttf", "cmb10.ttf")
_COUNT_KINDS = ("ellipse", "rect", "triangle", "star")
_MAX_COUNT = 10
# pose: (shape kind, angular period of its orientation: a bar repeats after 180 degrees)
_POSE_KINDS = (("ellipse", np.pi), ("rect", np.pi), ("triangle", 2 * np.pi), ("halfdisc", 2 * np.pi))
_POSE_BINS = 12
_PLACE_GRID = 4
_PHOTO_GRID = 3
_PATTERNS = (("stripes", 3.0), ("stripes", 5.0), ("stripes", 8.0), ("stripes", 12.0), ("checker", 4.0),
             ("checker", 8.0), ("checker", 12.0), ("dots", 4.0), ("dots", 7.0), ("dots", 11.0),
             ("blobs", 1.5), ("blobs", 3.0), ("blobs", 6.0), ("rings", 5.0))
_OBJECT_TEXTURES = 4  # plain, stripes 6 px, stripes 3 px, checker (_render_upstream)

# group -> number of classes, in class-id order
GROUPS: dict[str, int] = {
    "glyph": len(_CHARS),
    "count": len(_COUNT_KINDS) * _MAX_COUNT,
    "pose": len(_POSE_KINDS) * _POSE_BINS,
    "place": _PLACE_GRID ** 2,
    "photo": len(_UPSTREAM_BG) * _PHOTO_GRID ** 2,
    "pattern": len(_PATTERNS),
    "object": len(_KINDS) * _OBJECT_TEXTURES,
}
CLASSES = sum(GROUPS.values())


def class_names() -> list[str]:
    """Human-readable name of every class, in class-id order (recorded with the data set)."""
    names = [f"glyph:{c}" for c in _CHARS]
    names += [f"count:{k}x{n}" for k in _COUNT_KINDS for n in range(1, _MAX_COUNT + 1)]
    names += [f"pose:{k}@{b}" for k, _ in _POSE_KINDS for b in range(_POSE_BINS)]
    names += [f"place:{r},{c}" for r in range(_PLACE_GRID) for c in range(_PLACE_GRID)]
    names += [f"photo:{f}@{r},{c}" for f, _ in _UPSTREAM_BG for r in range(_PHOTO_GRID) for c in range(_PHOTO_GRID)]
    names += [f"pattern:{k}{s:g}" for k, s in _PATTERNS]
    names += [f"object:{k}/{t}" for k in _KINDS for t in range(_OBJECT_TEXTURES)]
    return names


def _kind_index(name: str) -> int:
    return _KINDS.index(name)


# ---- glyph ------------------------------------------------------------------------------------

def _font_dir() -> Path:
    import matplotlib  # imported here: only the glyph group needs its bundled fonts

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _glyph(char: str, font: str) -> np.ndarray:
    """Read-only float32 ink mask in [0, 1] of ``char`` in ``font`` at 40 px, cropped to its ink."""
    path = _font_dir() / font
    if not path.is_file():
        raise FileNotFoundError(f"bundled matplotlib font {path} is missing; the rich upstream set renders "
                                f"its glyph classes with the fonts {list(_FONTS)}")
    mask = ImageFont.truetype(str(path), 40).getmask(char)
    arr = np.asarray(mask, np.uint8).reshape(mask.size[1], mask.size[0]).astype(np.float32) / 255
    ys, xs = np.nonzero(arr > 0.1)
    arr = arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    arr.flags.writeable = False
    return arr


def _render_glyph(rng, sub):
    n = len(sub)
    ink = np.zeros((n, RES, RES), np.float32)
    font = rng.integers(0, len(_FONTS), n)
    angle = rng.uniform(-20, 20, n)
    height = rng.integers(14, 29, n)
    aspect = rng.uniform(0.8, 1.25, n)
    degrade = np.where(rng.random(n) < 0.4, rng.integers(6, 13, n), 0)  # low-res side, 0 = keep sharp
    pos = rng.random((n, 2))
    for i, c in enumerate(sub):
        g = Image.fromarray(_glyph(_CHARS[c], _FONTS[font[i]]), mode="F").rotate(angle[i], Image.BILINEAR,
                                                                                expand=True)
        w, h = g.size
        th = int(height[i])
        tw = int(np.clip(round(th * w / h * aspect[i]), 3, RES))
        if degrade[i]:  # blocky, blurred strokes like sklearn's upscaled 8x8 digits
            d = int(degrade[i])
            g = g.resize((max(2, round(d * tw / th)), d), Image.BOX)
        arr = np.clip(np.asarray(g.resize((tw, th), Image.BILINEAR)), 0, 1)
        y0, x0 = int(pos[i, 0] * (RES - th + 1)), int(pos[i, 1] * (RES - tw + 1))
        ink[i, y0:y0 + th, x0:x0 + tw] = arr
    dark = rng.random(n) < 0.5
    return _paint(_noisy_background(rng, n, dark), ink, _contrasting_colours(rng, dark))


# ---- count, pose, place -------------------------------------------------------------------------

def _render_count(rng, sub):
    kind_of, count = np.divmod(sub, _MAX_COUNT)
    count = count + 1
    n = len(sub)
    kinds = np.array([_kind_index(k) for k in _COUNT_KINDS])[kind_of]
    # Objects sit in distinct cells of a 4x4 grid, jittered inside their cell, so they never
    # overlap; rejection sampling of free positions is far too slow at 10 objects in 32 px.
    cell = RES / 4
    radius = rng.uniform(1.6, 2.8, (n, _MAX_COUNT)).astype(np.float32)
    reach = radius * 1.42  # bounding radius of any of the kinds at aspect 1
    cells = np.argsort(rng.random((n, 16)), axis=1)[:, :_MAX_COUNT]  # distinct cells per image
    row, col = np.divmod(cells, 4)
    jitter = rng.random((n, _MAX_COUNT, 2))
    span = np.maximum(cell - 2 * reach, 0)[..., None]
    centres = (np.stack([col, row], axis=-1) * cell + reach[..., None] + jitter * span).astype(np.float32)
    dark = rng.random(n) < 0.5
    img = _noisy_background(rng, n, dark)
    same_colour = rng.random(n) < 0.5
    base_colour = _contrasting_colours(rng, dark)
    for j in range(_MAX_COUNT):
        has = count > j
        m = int(has.sum())
        if not m:
            continue
        colour = np.where(same_colour[has, None], base_colour[has], _contrasting_colours(rng, dark[has]))
        cov = _coverage(kinds[has], centres[has, j, 0], centres[has, j, 1], radius[has, j],
                        rng.uniform(0, 2 * np.pi, m), np.ones(m))
        img[has] = _paint(img[has], cov, colour)
    return img


def _render_pose(rng, sub):
    kind_of, b = np.divmod(sub, _POSE_BINS)
    n = len(sub)
    kinds = np.array([_kind_index(k) for k, _ in _POSE_KINDS])[kind_of]
    period = np.array([p for _, p in _POSE_KINDS])[kind_of]
    angle = (b + rng.random(n)) * period / _POSE_BINS
    elongated = period < 2 * np.pi
    aspect = np.where(elongated, rng.uniform(2.2, 4.0, n), rng.uniform(1.2, 1.8, n))
    cov = _coverage(kinds, rng.uniform(11, 21, n), rng.uniform(11, 21, n), rng.uniform(6, 11, n), angle, aspect,
                    ss=4)
    dark = rng.random(n) < 0.5
    return _paint(_noisy_background(rng, n, dark), cov, _contrasting_colours(rng, dark))


def _render_place(rng, sub):
    n, cell = len(sub), RES / _PLACE_GRID
    size = rng.uniform(2.5, 4.5, n)
    row, col = np.divmod(sub, _PLACE_GRID)
    cy = np.clip((row + rng.random(n)) * cell, size, RES - size)
    cx = np.clip((col + rng.random(n)) * cell, size, RES - size)
    cov = _coverage(rng.integers(0, len(_KINDS), n), cx, cy, size, rng.uniform(0, 2 * np.pi, n),
                    rng.uniform(1, 1.5, n))
    dark = rng.random(n) < 0.5
    return _paint(_noisy_background(rng, n, dark), cov, _contrasting_colours(rng, dark))


# ---- photo regions, patterns, objects -------------------------------------------------------------

def _render_photo(rng, sub):
    n = len(sub)
    src, region = np.divmod(sub, _PHOTO_GRID ** 2)
    r, c = np.divmod(region, _PHOTO_GRID)
    out = np.empty((n, RES, RES, 3), np.uint8)
    side = rng.integers(24, 65, n)
    pos, k, flip = rng.random((n, 2)), rng.integers(0, 4, n), rng.random(n) < 0.5
    for i in range(n):
        photo = _photo(*_UPSTREAM_BG[src[i]])
        h, w = photo.shape[:2]
        s = int(min(side[i], h, w))
        # the crop's centre lies in region (r, c) of a 3x3 grid over the photo
        cy = (r[i] + pos[i, 0]) * h / _PHOTO_GRID
        cx = (c[i] + pos[i, 1]) * w / _PHOTO_GRID
        y0 = int(np.clip(cy - s / 2, 0, h - s))
        x0 = int(np.clip(cx - s / 2, 0, w - s))
        crop = np.rot90(_resize(np.ascontiguousarray(photo[y0:y0 + s, x0:x0 + s]), RES), k[i])
        out[i] = crop[:, ::-1] if flip[i] else crop
    return _photometric_jitter(rng, out.astype(np.float32)).astype(np.float32)


def _smooth_noise(rng, n: int, scale: float) -> np.ndarray:
    """(n, RES, RES) Gaussian noise smoothed at ``scale`` px, standardised per image (via FFT)."""
    f = np.fft.fftfreq(RES)
    kernel = np.exp(-2 * (np.pi * scale) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, RES, RES))) * kernel).real
    return (field - field.mean(axis=(1, 2), keepdims=True)) / (field.std(axis=(1, 2), keepdims=True) + 1e-8)


def _render_pattern(rng, sub):
    n = len(sub)
    yy, xx = np.mgrid[0:RES, 0:RES].astype(np.float32)
    phi = rng.uniform(0, np.pi, n)[:, None, None]
    along = np.cos(phi) * xx + np.sin(phi) * yy  # (n, H, W)
    across = -np.sin(phi) * xx + np.cos(phi) * yy
    period = np.array([s for _, s in _PATTERNS])[sub][:, None, None] * rng.uniform(0.85, 1.15, (n, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 2, 1, 1))
    kind = np.array([k for k, _ in _PATTERNS])[sub]
    mask = np.zeros((n, RES, RES), np.float32)
    a = np.sin(2 * np.pi * along / period + phase[:, 0])
    b = np.sin(2 * np.pi * across / period + phase[:, 1])
    sel = kind == "stripes"
    mask[sel] = a[sel] > 0
    sel = kind == "checker"
    mask[sel] = (a[sel] > 0) ^ (b[sel] > 0)
    sel = kind == "dots"
    mask[sel] = (a[sel] > 0.5) & (b[sel] > 0.5)
    sel = kind == "rings"
    cy, cx = rng.uniform(0, RES, (2, int(sel.sum()), 1, 1))
    mask[sel] = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period[sel] + phase[sel, 0]) > 0
    for _, scale in {p for p in _PATTERNS if p[0] == "blobs"}:
        sel = (kind == "blobs") & (np.array([s for _, s in _PATTERNS])[sub] == scale)
        mask[sel] = _smooth_noise(rng, int(sel.sum()), scale) > 0
    dark = rng.random(n) < 0.5
    return _paint(_noisy_background(rng, n, dark), mask, _contrasting_colours(rng, dark))


def _render_object(rng, sub):
    n = len(sub)
    kind, texture = np.divmod(sub, _OBJECT_TEXTURES)
    recipe = np.stack([kind, rng.integers(0, 6, n), texture, rng.integers(0, 3, n)], axis=1)
    return _render_upstream(rng, recipe).astype(np.float32)


_RENDER = {"glyph": _render_glyph, "count": _render_count, "pose": _render_pose, "place": _render_place,
           "photo": _render_photo, "pattern": _render_pattern, "object": _render_object}
if set(_RENDER) != set(GROUPS):
    raise RuntimeError(f"rich upstream renderers {sorted(_RENDER)} do not match GROUPS {sorted(GROUPS)}")


def _augment(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Float (n, RES, RES, 3) -> uint8: greyscale (p 0.25), blur by down/up-sampling (p 0.25), noise."""
    n = len(img)
    grey = rng.random(n) < 0.25
    img = np.where(grey[:, None, None, None], img.mean(axis=3, keepdims=True), img)
    out = _to_uint8(img + rng.normal(0, rng.uniform(0, 8, (n, 1, 1, 1)), img.shape))
    for i in np.flatnonzero(rng.random(n) < 0.25):
        side = int(rng.integers(12, 25))
        out[i] = np.asarray(Image.fromarray(out[i]).resize((side, side), Image.BILINEAR).resize((RES, RES),
                                                                                                  Image.BILINEAR))
    return out


def render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """uint8 (n, RES, RES, 3) images of the given class ids (0..CLASSES-1), in the order given."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= CLASSES):
        raise ValueError(f"rich upstream class ids must be in [0, {CLASSES}), got {labels.min()}..{labels.max()}")
    img = np.empty((len(labels), RES, RES, 3), np.float32)
    start = 0
    for group, size in GROUPS.items():
        sel = (labels >= start) & (labels < start + size)
        if sel.any():
            img[sel] = _RENDER[group](rng, labels[sel] - start)
        start += size
    return _augment(rng, img)


def make_rich_upstream(out_dir: str | os.PathLike, seed: int, n_per_class: int = 100,
                       n_val_per_class: int = 20) -> Path:
    """Write the rich upstream set (``CLASSES`` classes, splits ``train`` and ``val``) to ``out_dir``.

    Every class has ``n_per_class`` training and ``n_val_per_class`` validation images; the set is a
    pure function of ``seed``. Returns ``out_dir``.
    """
    if n_per_class < 1 or n_val_per_class < 1:
        raise ValueError(f"rich upstream: need >= 1 image per class, got n_per_class={n_per_class}, "
                         f"n_val_per_class={n_val_per_class}")
    rng = _rng(seed, "upstream-rich")
    splits = {}
    for split, per_class in (("train", n_per_class), ("val", n_val_per_class)):
        labels = _balanced_labels(rng, CLASSES * per_class, CLASSES)
        # chunks bound the memory of the supersampled coverage masks
        images = np.concatenate([render(rng, labels[i:i + 2000]) for i in range(0, len(labels), 2000)])
        splits[split] = (images, labels)
    return write_vtab_task(out_dir, splits, CLASSES)
