"""Bring one local pretrained weight file into the workflow (spec §8): load it into its timm
architecture (a file for another architecture fails here, naming the file), and store it as the
family's anchor with its source path, size and sha256 recorded."""

import time
from pathlib import Path

from esta import runtime
from esta.vit.anchors import build_anchor, family, family_at
from esta.vit.timm_family import family_label, stored_classes
from esta.tensors import save_tensors

log = runtime.start_job(snakemake)
p, out = snakemake.params, snakemake.output
i = int(snakemake.wildcards.i)
fam = family_at(p.family, p.img_size)
spec = family(fam)[i]
if p.weights_root is None or p.file is None:
    raise ValueError(f"family {family_label(p.family)} loads local weights: set config keys weights_root and "
                     f"anchors.weights (one file per anchor, small to large), e.g. --config weights_root=/path")
path = Path(p.weights_root).expanduser().resolve() / p.file
t0 = time.monotonic()
# the stored head is kept (as many outputs as the file has; 0: none) so the file is checked and stored whole
classes = stored_classes(path)
anchor = build_anchor(spec, classes, path, keep_head=True)
source = dict(file=str(path), bytes=path.stat().st_size, sha256=runtime.file_digest(path))
meta = dict(anchor=spec.name, timm_name=spec.timm_name, kwargs=spec.kwargs, num_classes=classes, source=source)
save_tensors(anchor.state_dict(), out.weights, meta)
runtime.write_json(out.info, dict(meta, params=sum(t.numel() for t in anchor.parameters()), accuracy=None, steps=0,
                                  wall_s=time.monotonic() - t0, peak_rss_mb=runtime.peak_rss_mb()))
log.info("registered %s from %s (%d bytes)", spec.name, path, source["bytes"])
