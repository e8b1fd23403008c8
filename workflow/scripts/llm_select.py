"""ESTA's one-stage deployment for Stitched LLaMA (spec §6, §11): per interval of stitch *parameters*,
the stitch of best score (``esta.scores``): training-time importance (highest) or loss (lowest)
among those with at least `min_visits` visits (the loss: visits inside its window), or the loss on
fixed training records after training (`loss_batch`, a forward pass); anchors always."""

import pandas as pd

from esta import runtime
from esta.pareto import deploy_by_score
from esta.scores import gate_visits

log = runtime.start_job(snakemake)
p, inp, w = snakemake.params, snakemake.input, snakemake.wildcards
d, score_name = p.deploy, p.score
stitches = pd.read_csv(inp.stitches)
stats = pd.read_csv(inp.stats).set_index("stitch_id").loc[stitches["stitch_id"]]
if score_name == "loss_batch":  # only then a model: the other selections are table jobs without torch
    import torch

    from esta.llm.build import assemble, encode, load_tokenizer, stitched
    from esta.llm.data import load_alpaca
    from esta.llm.evaluate import response_nll
    from esta.train import pick_device

    net, _ = stitched(p.folders, p.dtype, stitch_init=inp.stitch, rule=p.stitch_rule)
    model = assemble(net, p.pst, inp.model).to(pick_device(p.device)).eval()
    records = load_alpaca(inp.train)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(int(w.seed))).tolist()
    fixed = [records[i] for i in order[: d["loss_batch"]["examples"]]]
    data, _ = encode(fixed, load_tokenizer(inp.tokenizer), p.tokenizer, inp.train)
    nll = {sid: response_nll(model, data, sid, p.eval_batch_size)["nll"] for sid in stitches["stitch_id"]}
    score = stitches["stitch_id"].map(nll).to_numpy()
    log.info("response NLL of every stitch on %d fixed training records", len(fixed))
else:
    score = stats[score_name].to_numpy()
deployed, scores = deploy_by_score(stitches, score_name, score, d["intervals"],
                                   visits=gate_visits(score_name, stats),
                                   min_visits=d["min_visits"], cost="params")
log.info("deployed %d stitches by %s: %s", len(deployed), score_name, deployed["stitch_id"].tolist())
runtime.write_csv(deployed, snakemake.output.deployed)
runtime.write_csv(scores, snakemake.output.scores)  # every stitch's: the score analyses rank all of them
