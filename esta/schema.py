"""Validation of the workflow config against ``workflow/schemas/config.schema.yaml`` (STYLE: config
is validated before any job runs; an unknown or mistyped key fails with its name).

Snakemake's ``validate`` reports a failure by printing the whole schema around the one useful line.
``check_config`` runs the same JSON-schema check with ``jsonschema`` and reports each violation on
one line: the key path, the bad value and the rule it broke. Every key is required by the schema
(the configs in the repository are complete), so no defaults are filled in.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import yaml

__all__ = ["config_errors", "check_config"]

MAX_ERRORS = 8
MAX_VALUE_CHARS = 120


def _short(value) -> str:
    """The bad value, cut short; a mapping by its size only (the message names the key at fault)."""
    text = f"{{{len(value)} keys}}" if isinstance(value, dict) else repr(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 4] + " ..."


# One parse of the schema per process: the workflow checks the config and each variant merged into it
# (16 checks of config/paper.yaml), and re-reading the schema with PyYAML was most of each (issue 32).
@functools.lru_cache(maxsize=None)
def _validator(schema_file: str):
    schema = yaml.safe_load(Path(schema_file).read_text())
    return jsonschema.validators.validator_for(schema)(schema)


def config_errors(config: dict, schema_file: str | Path, name: str = "config") -> list[str]:
    """One line per violation, ``<name>.<key path> = <value>: <message> [schema rule]``, sorted by
    key path; empty when ``config`` is valid."""
    validator = _validator(str(schema_file))
    lines = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        message = err.message if len(err.message) <= 2 * MAX_VALUE_CHARS else err.message[: 2 * MAX_VALUE_CHARS] + " ..."
        rule = "/".join(str(p) for p in err.absolute_schema_path)
        lines.append(f"{name}{path} = {_short(err.instance)}: {message} [schema rule {rule}]")
    return lines


def check_config(config: dict, schema_file: str | Path, what: str = "config") -> None:
    """Raise ``ValueError`` listing the violations of ``config`` (at most ``MAX_ERRORS``);
    ``what`` names the config in the first line (e.g. a variant merged into it)."""
    errors = config_errors(config, schema_file)
    if errors:
        more = f"\n  ... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise ValueError(
            f"{what} failed validation against {Path(schema_file).name} ({len(errors)} error(s)):\n  "
            + "\n  ".join(errors[:MAX_ERRORS])
            + more
        )
