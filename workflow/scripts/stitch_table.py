"""The configured family's stitch table: ids, positions, depth, MACs and parameters per stitch."""

from esta import runtime
from esta.vit.anchors import family_at
from esta.vit.data import task_info
from esta.info import stitch_table

runtime.start_job(snakemake)
# MACs and parameters with the head of the first task; deployment intervals use MACs without head.
classes = task_info(snakemake.params.tasks[0]).num_classes
runtime.write_csv(stitch_table(family_at(snakemake.params.family, snakemake.params.img_size), classes), snakemake.output[0])
