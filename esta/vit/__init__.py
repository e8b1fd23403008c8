"""The vision family: timm ViT anchors, their stitching, PST wiring, data and evaluation (spec §1-§8).

The method itself (importance, sampling, deployment, the training loop, Pareto tables) lives one level
up in ``esta`` and serves every family; this package holds what is specific to ViTs.
"""
