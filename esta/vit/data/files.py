"""Reading image files and checking listed paths, shared by the VTAB-1k and FGVC readers (spec §8).

Every failure is an ``OSError`` (or ``ValueError`` for a bad path) naming the file, so a broken
image in a 20,000-image split points at itself instead of surfacing as a PIL traceback.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` as a 3-channel RGB image; any failure is an OSError naming the path."""
    try:
        with Image.open(path) as im:
            # convert() decodes; any mode (L, P, CMYK, RGBA, ...) becomes 3-channel RGB
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


def check_header(path: Path, where: str) -> None:
    """Open ``path`` and read its size (header only, no decode); OSError naming ``where`` and the path."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError) as e:  # UnidentifiedImageError (random bytes, empty file) is an OSError
        raise OSError(f"{where}: cannot read image {path}: {e}") from e
    if width < 1 or height < 1:
        raise OSError(f"{where}: image {path} has an empty size {width}x{height}")
