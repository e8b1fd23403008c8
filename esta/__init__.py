"""ESTA (He et al., CVPR 2024) and its SN-Net baseline: the method core (this package's modules),
the ViT family (``esta.vit``) and the Stitched LLaMA family (``esta.llm``); ``esta.Palette`` is what
a user deploys (spec §12), loaded through its family: ``esta.vit.palette.load(path)`` or
``esta.llm.palette.load(path)``."""

import importlib

__all__ = ["Palette"]


def __getattr__(name: str):
    # Imported on first use, by name: every workflow job imports this package, and the rules' code
    # inputs follow import statements (esta.modules.closure), so a plain import here would make every
    # job depend on the palette's code.
    if name == "Palette":
        return importlib.import_module("esta.palette").Palette
    raise AttributeError(f"module 'esta' has no attribute {name!r}")
