"""The held-out multiple-choice items (llm_prepare's mc.json) as the local lm-eval task esta_llm_mc."""

import json
from pathlib import Path

from esta import runtime
from esta.llm.lm_eval_adapter import write_choice_task

log = runtime.start_job(snakemake)
items = json.loads(Path(snakemake.input.mc).read_text())
folder = write_choice_task(items, snakemake.output[0], "esta_llm_mc")
log.info("wrote lm-eval task esta_llm_mc (%d items) to %s", len(items), folder)
