"""Before stitching: the larger anchor must be the better one (tasks-A exact match of pretrained
anchors, held-out NLL of registered ones); otherwise stitches between them mean nothing. Fails
loudly with the numbers."""

import json

from esta import runtime

log = runtime.start_job(snakemake)
infos = [json.loads(open(f).read()) for f in snakemake.input.infos]
rows = [dict(anchor=a["anchor"], name=a["name"], params=a["params"], metric=a["check_metric"], value=a["value"])
        for a in infos]
for small, large in zip(infos, infos[1:]):
    better = large["value"] > small["value"] if large["higher_is_better"] else large["value"] < small["value"]
    line = (f"{large['name']} ({large['params']:,} params) {large['check_metric']} = {large['value']:.4f} vs "
            f"{small['name']} ({small['params']:,} params) {small['check_metric']} = {small['value']:.4f}")
    log.info(line)
    if not better and snakemake.params.check:
        raise ValueError(f"the larger anchor is not better than the smaller: {line}; give it more pretraining "
                         "(llm.pretrain.steps / lr) or set llm.anchors.check: false")
runtime.write_json(snakemake.output[0], dict(anchors=rows, check=snakemake.params.check))
