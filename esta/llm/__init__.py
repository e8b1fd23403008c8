"""The language family: LLaMA-architecture anchors, their stitching, PST wiring, instruction data,
evaluation (with an lm-evaluation-harness adapter), export of deployed stitches and data-parallel
training (spec §11, "Stitched LLaMA").

The method itself (importance, sampling, deployment, the training loop, Pareto tables) lives one level
up in ``esta`` and serves every family; this package holds what is specific to decoder LLMs.
"""
