"""PST on Stitched LLaMA with the shared loop and sampler: ESTA over every stitch of the anchors
(llm_train_esta), or one anchor adapted alone with the same LoRA recipe, the baseline a user would
otherwise run (llm_adapt_anchor: a one-stitch model). With llm.nproc > 1 the job runs data parallel
under torchrun (esta.llm.job)."""

from pathlib import Path

from esta import runtime
from esta.llm.job import launch

log = runtime.start_job(snakemake)
w, p = snakemake.wildcards, snakemake.params
params = {k: getattr(p, k) for k in ("folders", "dtype", "stitch_rule", "tokenizer", "device", "checkpoint_every_s", "pst",
                            "train", "ckpt_dir")}
params.update(sampler=p.get("sampler"), intervals=p.get("intervals"), loss_window=p.get("loss_window"))
spec = dict(rule=snakemake.rule, seed=int(w.seed), anchor=w.get("i"), nproc=p.nproc, params=params,
            input={k: v for k, v in snakemake.input.items()}, output={k: v for k, v in snakemake.output.items()})
log.info("%s seed %s: %d process(es)", snakemake.rule, w.seed, p.nproc)
launch(spec, Path(p.ckpt_dir) / "job.json", threads=p.torch_threads)
