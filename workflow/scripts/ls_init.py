"""Least-squares initialisation of the stitching layers on one batch of training images (spec §4),
on the anchors the method stitches; for three-stage ESTA, the anchors PST adapted alone
(esta.vit.stages: the family's PST model started from them, each anchor with its own biases)."""

from esta import runtime
from esta.vit.tasks import task_kind
from esta.vit.anchors import build_family, family_at
from esta.vit.build import assemble, fixed_batch, open_task, read_manifest, tuning_config
from esta.tensors import load_tensors_file, save_tensors
from esta.vit.data import mode_splits
from esta.vit.stages import adapted_anchor_biases, start_from_adapted, stitch_layer_weights
from esta.vit.stitch import StitchedViT, ls_init

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input

if task_kind(w.task) == "seg":  # a dense task (spec §14)
    from esta.vit.seg_jobs import ls_init as seg_ls_init

    seg_ls_init(w, p, inp, snakemake.output, log)
else:
    manifest = read_manifest(inp.data)
    data = open_task(manifest, mode_splits(w.task, w.mode)[0], p.img_size, augment=False,
                     normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation, lazy=True)
    images, _ = fixed_batch(data, p.n_images, int(w.seed))  # (N, 3, H, W), un-augmented
    fam = family_at(p.family, p.img_size)

    if inp.adapted:  # three-stage ESTA: fit on the adapted anchors
        model = assemble(fam, manifest["num_classes"], inp.anchors, None, tuning_config("esta", p.method),
                         task=manifest["task"])
        n = start_from_adapted(model, [load_tensors_file(f)[0] for f in inp.adapted], list(inp.adapted))
        log.info("started from %d adapted tensors of %s", n, list(inp.adapted))
        model.eval()
        with adapted_anchor_biases(model) as net:
            residual = ls_init(net, images)
        layers = stitch_layer_weights(model)
    else:
        net = StitchedViT(build_family(fam, manifest["num_classes"], inp.anchors, task=manifest["task"]))
        residual = ls_init(net, images)
        layers = net.stitch_layers.state_dict()
    for (pair, layer), r in sorted(residual.items()):
        log.info("pair %d layer %d: relative LS residual %.4f", pair, layer, r)
    meta = dict(task=w.task, seed=int(w.seed), mode=w.mode, n_images=len(images), adapted=bool(inp.adapted),
                residual={f"{a}.{b}": r for (a, b), r in residual.items()})
    save_tensors(layers, snakemake.output[0], meta)
