"""The configured family's stitch table: ids, positions, depth, MACs and parameters per stitch.

``macs``/``gmacs``/``params`` include the head of the first task (``head_classes``, from its manifest); the head-free
columns and the head's cost per class let every task add its own head (esta.vit.metrics.with_task_head).
Deployment intervals use MACs without the head."""

import json

from esta import runtime
from esta.vit.anchors import family_at
from esta.vit.metrics import head_split

runtime.start_job(snakemake)
p = snakemake.params
classes = json.loads(open(snakemake.input.head).read())["num_classes"]  # the first task's
runtime.write_csv(head_split(family_at(p.family, p.img_size), classes), snakemake.output[0])
