"""Gradient interference through the shared LoRA (spec §10): for each training snapshot, the cosine
between the LoRA gradients of every pair of stitches sharing a module, on one fixed training batch."""

import pandas as pd

from esta import runtime
from esta.analysis import gradient_cosines
from esta.vit.anchors import family_at
from esta.vit.build import assemble, fixed_batch, open_task, read_manifest, tuning_config
from esta.tensors import load_tensors_file, load_trainable
from esta.vit.data import mode_splits
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
manifest = read_manifest(inp.data)
device = pick_device(p.device)
model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch,
                 tuning_config("esta", p.method), task=manifest["task"]).to(device)
data = open_task(manifest, mode_splits(w.task, "tuning")[0], p.img_size, augment=False,
                 normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation, lazy=True)
x, y = (t.to(device) for t in fixed_batch(data, p.method["train"]["batch_size"], int(w.seed)))

tensors, meta = load_tensors_file(inp.snapshots)
frames = []
for step, frac in zip(meta["steps"], meta["fracs"]):
    state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == str(step)}
    load_trainable(model, state, f"{inp.snapshots} (snapshot {step})")
    cos = gradient_cosines(model, (x, y))
    log.info("step %d (%.0f %%): %d pairs, mean cosine %.3f", step, 100 * frac, len(cos), cos["cosine"].mean())
    frames.append(cos.assign(step=step, frac=frac))
out = pd.concat(frames, ignore_index=True).assign(task=w.task, seed=int(w.seed), variant=w.variant,
                                                   stitch_biases=p.method["stitch_biases"])
runtime.write_csv(out, snakemake.output[0])
