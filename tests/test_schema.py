"""esta.schema: the workflow config's validation names the key path, the value and the rule."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import ROOT

from esta.schema import check_config, config_errors

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))]


def load(path):
    return yaml.safe_load(path.read_text())


def schema_defaults(node, path="") -> list[str]:
    """Paths of every ``default`` keyword in a schema (property *names* called default skipped)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "default":
                out.append(path)
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    out += schema_defaults(sub, f"{path}/{key}/{name}")
            elif isinstance(value, dict | list):
                out += schema_defaults(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            out += schema_defaults(sub, f"{path}/{i}")
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_is_valid(config):
    assert config_errors(load(config), SCHEMA) == []


def test_schema_has_no_defaults_to_fill():
    """Snakemake's validate fills schema defaults in; check_config does not, which is only the same
    when the schema declares none (every key is required instead)."""
    assert schema_defaults(load(SCHEMA)) == []


def test_errors_name_path_value_and_rule_one_line_each():
    cfg = load(ROOT / "config.yaml")
    cfg["esta"]["lora"]["rank"] = -2
    cfg["tasks"] = ["embedded/" + "x" * 300]
    cfg["bogus"] = 1
    errors = config_errors(cfg, SCHEMA)
    assert errors[0] == f"config = {{{len(cfg)} keys}}: Additional properties are not allowed ('bogus' was " \
                        "unexpected) [schema rule additionalProperties]"
    assert errors[1] == ("config.esta.lora.rank = -2: -2 is less than the minimum of 1 "
                         "[schema rule properties/esta/properties/lora/properties/rank/minimum]")
    assert errors[2].startswith("config.tasks[0] = 'embedded/xxx") and "[schema rule properties/tasks/items/anyOf]" in errors[2]
    assert len(errors) == 3 and all("\n" not in e and len(e) < 500 for e in errors)
    with pytest.raises(ValueError, match=r"variant x failed validation .*\(3 error\(s\)\)") as info:
        check_config(copy.deepcopy(cfg), SCHEMA, "variant x")
    assert str(info.value).count("\n") == 3
