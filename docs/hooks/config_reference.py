"""MkDocs hook: the configuration reference, generated from the schema at every docs build.

Every key of ``workflow/schemas/config.schema.yaml`` becomes one row (its dotted path, type, default
read from ``config.yaml``, allowed values, description), so the reference cannot go stale: the schema
is what ``validate()`` enforces, and ``config.yaml`` is the embedded default. Keys under a map of
user-chosen names (``datasets``, ``variants``) appear as ``datasets.<name>.source`` etc.; list items
of object type as ``anchors.timm[].name``. ``mkdocs.yml`` names this file under ``hooks:``; tests
import it too (tests/test_docs.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = ROOT / "config.yaml"
PAGE = "configuration-reference.md"
NAME = "<name>"  # placeholder of a user-chosen key (additionalProperties)


def _resolve(node: dict, schema: dict) -> dict:
    """``node`` with a local ``$ref`` replaced by its target (the node's own keys win)."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def rows(schema: dict) -> list[tuple[str, dict]]:
    """(dotted path, resolved schema node) of every property, depth first, in schema order."""
    out: list[tuple[str, dict]] = []

    def walk(node: dict, prefix: str) -> None:
        node = _resolve(node, schema)
        for key, child in node.get("properties", {}).items():
            path = f"{prefix}.{key}" if prefix else key
            out.append((path, _resolve(child, schema)))
            walk(child, path)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and prefix:
            path = f"{prefix}.{NAME}"
            out.append((path, _resolve(extra, schema)))
            walk(extra, path)
        items = node.get("items")
        if isinstance(items, dict):
            for alt in [items, *items.get("anyOf", [])]:
                if "properties" in _resolve(alt, schema):
                    walk(alt, f"{prefix}[]")

    walk(schema, "")
    return out


def _type(node: dict) -> str:
    if "enum" in node:
        return "enum"
    if "anyOf" in node:
        return " or ".join(_type(a) for a in node["anyOf"])
    kind = node.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    items = node.get("items")
    if kind.startswith("array") and isinstance(items, dict):
        inner = " or ".join(_type(a) for a in items["anyOf"]) if "anyOf" in items else _type(items)
        kind = kind.replace("array", f"array of {inner}", 1)
    return kind


_BOUNDS = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<"}


def _allowed(node: dict) -> str:
    parts = []
    if "enum" in node:
        parts.append(" · ".join(f"`{v}`" for v in node["enum"]))
    parts += [f"{sign} {node[key]}" for key, sign in _BOUNDS.items() if key in node]
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    items = node.get("items")
    if isinstance(items, dict):
        inner = _allowed(items)
        if inner:
            parts.append(f"each {inner}")
        for alt in items.get("anyOf", []):
            if _allowed(alt):
                parts.append(_allowed(alt))
    for key, word in (("minItems", "at least"), ("maxItems", "at most")):
        if key in node:
            parts.append(f"{word} {node[key]} item{'s' if node[key] != 1 else ''}")
    if node.get("uniqueItems"):
        parts.append("no repeats")
    return ", ".join(parts)


def _lookup(config: dict, path: str):
    """The value config.yaml sets at ``path``; KeyError where it sets none (or a placeholder)."""
    value = config
    for part in path.split("."):
        if part == NAME or part.endswith("[]") or not isinstance(value, dict):
            raise KeyError(path)
        value = value[part]
    return value


def _default(node: dict, config: dict, path: str) -> str:
    try:
        value = _lookup(config, path)
    except KeyError:
        return "–"
    if isinstance(value, dict) and "properties" in node:
        return "*(the keys below)*"
    if isinstance(value, dict) and node.get("additionalProperties") not in (None, False) and value:
        return "names: " + ", ".join(f"`{k}`" for k in value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def _cell(text: str) -> str:
    """One table cell: on one line, pipes escaped, ``<`` escaped outside code spans (``custom/<name>``)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def reference_markdown(schema: dict | None = None, config: dict | None = None) -> str:
    """The whole reference page: one table per top-level key, every nested key a row."""
    schema = yaml.safe_load(SCHEMA.read_text()) if schema is None else schema
    config = yaml.safe_load(CONFIG.read_text()) if config is None else config
    lines = [
        "# Configuration reference",
        "",
        "*Generated from `workflow/schemas/config.schema.yaml` (the schema `validate()` enforces before any",
        "job) when the guide is built (`docs/hooks/config_reference.py`); defaults are the values of",
        "`config.yaml`, the embedded default. `config/smoke.yaml`, `config/paper.yaml`, `config/llama.yaml`",
        "and `config/upstream.yaml` set every key too. `<name>` stands for a name you choose.*",
        "",
        "Use another config with `--configfile`, or override single keys with `--config`, e.g.",
        "`--config seeds=[0,1,2]`; the [configuration guide](configuration.md) explains the choices behind",
        "the defaults.",
    ]
    header = ["", "| key | type | default (`config.yaml`) | allowed | description |", "| --- | --- | --- | --- | --- |"]
    general: list[str] = []  # top-level keys that hold no others, in one table first
    sections: dict[str, list[str]] = {}  # one table per top-level object, its keys below it
    for path, node in rows(schema):
        row = (
            f"| `{path}` | {_cell(_type(node))} | {_cell(_default(node, config, path))} | "
            f"{_cell(_allowed(node))} | {_cell(node.get('description', ''))} |"
        )
        top = path.split(".")[0]
        if path == top and node.get("type") != "object":
            general.append(row)
        elif path == top:
            sections[top] = ["", f"## `{top}`", "", _cell(node.get("description", "")), *header, row]
        else:
            sections[top].append(row)
    lines += ["", "## Top-level settings", *header, *general]
    for section in sections.values():
        lines += section
    return "\n".join(lines) + "\n"


def on_files(files, config):
    """MkDocs event: add the generated page to the site's files before the nav is built."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=reference_markdown()))
    return files
