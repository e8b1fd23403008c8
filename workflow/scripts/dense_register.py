"""Check a dense task's folder whole (ADE20K layout) and write its manifest: root, classes,
reduce_zero_label, split sizes, pixels per class. Downstream jobs take the manifest as input."""

import os
from pathlib import Path

from esta import runtime
from esta.vit.seg_data import check_ade20k, class_names, dense_task

log = runtime.start_job(snakemake)
name, out = snakemake.wildcards.dtask, Path(snakemake.output[0])
row = dense_task(name)
root = Path(snakemake.input.get("folder") or Path(snakemake.params.data_root).expanduser() / row["folder"])
desc = check_ade20k(root, row["num_classes"], row["reduce_zero_label"])
rel = str(root.resolve()) if root.is_absolute() else os.path.relpath(root, out.parent)
runtime.write_json(out, dict(task=name, root=rel, num_classes=row["num_classes"],
                             reduce_zero_label=row["reduce_zero_label"], classes=class_names(name), **desc))
log.info("%s: %s", root, desc["splits"])
