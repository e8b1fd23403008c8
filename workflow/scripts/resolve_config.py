"""Write the configuration this run resolved to (defaults merged with --configfile/--config)."""

import yaml

from esta import runtime

runtime.start_job(snakemake)
tmp = runtime.atomic_path(snakemake.output[0])
tmp.write_text(yaml.safe_dump(dict(snakemake.params.config), sort_keys=False))
tmp.replace(snakemake.output[0])
