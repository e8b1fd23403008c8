"""The user guide (docs/, mkdocs.yml) and README stay true: the configuration reference covers every
key, the site builds with no broken link, anchor or image, README's quick start is what CI runs, and
every command the guide and README show runs as written (``snakemake`` ones as dry runs, ``python -m
esta`` ones on the smoke run's outputs). Commands are read from the pages at test time, so a page
that changes its commands is checked as it stands.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, make_workdir

PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
MKDOCS_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _hook():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "docs" / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# Configuration reference


def test_every_schema_property_has_a_description():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    rows = _hook().rows(schema)
    assert len(rows) > 150  # the walk reaches the nested keys, not just the top level
    missing = [path for path, node in rows if not str(node.get("description", "")).strip()]
    assert not missing, f"schema properties without a description: {missing}"


def _reference_rows(markdown: str) -> dict[str, str]:
    """key path -> type cell, from the generated page's tables."""
    rows = {}
    for line in markdown.splitlines():
        m = re.match(r"\| `([^`]+)` \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = m.group(2).strip()
    return rows


def _config_paths(value, prefix=""):
    """Dotted path of every key a config sets (list items of object type as ``key[]``)."""
    if isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path
            yield from _config_paths(child, path)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield from _config_paths(item, f"{prefix}[]")


def _covered(path: str, rows: dict[str, str]) -> bool:
    """A row names the key (``<name>`` standing for any name), or a free-form object above it
    (a row of type object with no rows below it, e.g. ``variants.<name>.esta``) takes it whole."""
    patterns = {re.escape(row).replace(re.escape("<name>"), r"[^.\[\]]+"): row for row in rows}
    segments = re.split(r"\.(?![^\[]*\])", path)
    for n in range(len(segments), 0, -1):
        prefix = ".".join(segments[:n])
        for pattern, row in patterns.items():
            if re.fullmatch(pattern, prefix):
                free = rows[row] == "object" and not any(r.startswith(row + ".") or r.startswith(row + "[]") for r in rows)
                return n == len(segments) or free
    return False


@pytest.mark.parametrize(
    "config", [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))], ids=lambda p: p.name
)
def test_reference_lists_every_key_a_config_sets(config):
    rows = _reference_rows(_hook().reference_markdown())
    paths = list(_config_paths(yaml.safe_load(config.read_text())))
    assert len(paths) > 100
    missing = [p for p in paths if not _covered(p, rows)]
    assert not missing, f"{config.name} sets keys the configuration reference lacks: {missing}"


def test_reference_shows_config_defaults_and_allowed_values():
    """The rows carry config.yaml's value and the schema's constraints, not just the key."""
    rows = {m.group(1): line for line in _hook().reference_markdown().splitlines() if (m := re.match(r"\| `([^`]+)` \|", line))}
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert f"`{config['deploy']['intervals']}`" in rows["deploy.intervals"]
    assert "`importance` · `loss` · `loss_batch` · `evaluate`" in rows["deploy.score"]
    assert f'`"{config["deploy"]["score"]}"`' in rows["deploy.score"]
    assert "≥ 1" in rows["esta.lora.rank"]
    assert "datasets.<name>.source" in rows and "variants.<name>.esta" in rows


# ------------------------------------------------------------------------------------------------
# The site


def _mkdocs_build(config_file: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mkdocs"), "build", "--strict", "-f", str(config_file), "-d", str(site)],
        capture_output=True, text=True, timeout=300, env=MKDOCS_ENV,
    )


def test_mkdocs_build_strict(tmp_path):
    proc = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = (tmp_path / "site" / "configuration-reference" / "index.html").read_text()
    assert "esta.sampler.kind" in reference and "llm.deploy.score" in reference
    assert (tmp_path / "site" / "rulegraph.svg").exists()


def test_mkdocs_strict_build_fails_on_a_broken_anchor(tmp_path):
    """The strict build is a check: a link to a heading that does not exist fails it, naming the page."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    for name in ("workflow", "config.yaml"):  # what the reference hook reads
        (tmp_path / name).symlink_to(ROOT / name)
    with open(tmp_path / "docs" / "outputs.md", "a") as f:
        f.write("\nSee [the missing part](results.md#no-such-heading).\n")
    proc = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "no-such-heading" in proc.stdout + proc.stderr


def test_readme_quick_start_is_what_ci_runs():
    """README's test command is .ci/run's, character for character; the main job is the one timed."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")][-1]
    readme = (ROOT / "README.md").read_text()
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", readme, re.S)]
    assert ci in blocks
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/snakemake --cores 8 results/figures/pareto_all.pdf" in blocks
    assert len(readme.splitlines()) <= 250


def _slug(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", ["README.md", "config/README.md"])
def test_pages_outside_the_site_link_to_what_exists(page):
    """README and config/README.md are read on GitHub, outside the MkDocs build: their relative links
    name files that exist, and their anchors headings of the target."""
    path = ROOT / page
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    assert links
    for link in links:
        if re.match(r"\w+://", link):
            continue
        file, _, anchor = link.partition("#")
        target = (path.parent / file).resolve() if file else path
        assert target.exists(), f"{page}: link {link} names a missing file"
        if anchor:
            headings = [_slug(h) for h in re.findall(r"^#+ (.+)$", target.read_text(), re.M)]
            assert anchor in headings, f"{page}: link {link}: no heading '{anchor}' in {target.name}"


# ------------------------------------------------------------------------------------------------
# Commands of the guide and README, read from the pages

PLACEHOLDER = re.compile(r"\b(PATH|N|MODEL|OUT_DIR)\b|\.\.\.")
COMMAND = re.compile(r"^(\.venv/bin/)?(snakemake|python -m esta)\b")


def _blocks(text: str):
    """(language, body) of every fenced block, and the text outside them."""
    blocks = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]
    return blocks, re.sub(r"^```\w*\n.*?^```", "", text, flags=re.S | re.M)


def _shell_commands(body: str) -> list[str]:
    """Commands of a bash block: continuations joined, comments dropped, ``a && b`` split."""
    joined = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\s+#\s.*$", "", line)
        out += [part.strip() for part in line.split(" && ")]
    return out


def _page_commands(path: Path):
    """Per page: (snakemake commands, python -m esta commands, transcript blocks, files it writes)."""
    text = path.read_text()
    blocks, prose = _blocks(text)
    snakemake, esta, transcripts, setup, files = [], [], [], [], {}
    for lang, body in blocks:
        named = re.fullmatch(r"#\s*([\w.-]+\.yaml)\b.*", body.splitlines()[0]) if body.strip() else None
        if lang == "yaml" and named:
            files[named.group(1)] = body
        elif lang in ("bash", "sh"):
            for cmd in _shell_commands(body):
                if cmd.startswith("printf ") or cmd.startswith("echo "):
                    setup.append(cmd)
                elif COMMAND.match(cmd):
                    (snakemake if "snakemake" in cmd.split()[0] else esta).append(cmd)
        elif any(line.startswith("$ ") for line in body.splitlines()):
            transcripts.append(body)
    for span in re.findall(r"`([^`]+)`", prose):
        cmd = " ".join(span.split())
        if COMMAND.match(cmd) and not PLACEHOLDER.search(cmd):
            (snakemake if "snakemake" in cmd.split()[0] else esta).append(cmd)
    return snakemake, esta, transcripts, setup, files


def _plan_key(cmd: str) -> str:
    """Commands that plan the same jobs (they differ only in ``--cores``, ``-n`` or the path to
    snakemake) are dry-run once: each dry run builds the whole DAG, 10-30 s on the 2-core CI box."""
    cmd = re.sub(r"^\.venv/bin/", "", cmd)
    return " ".join(re.sub(r"\s(--cores \d+|-n)(?=\s|$)", " ", f" {cmd} ").split())


def _snakemake_cases():
    cases, seen = {}, set()
    for page in PAGES:
        snakemake, _, _, setup, files = _page_commands(page)
        for cmd in snakemake:
            if _plan_key(cmd) not in seen:
                seen.add(_plan_key(cmd))
                cases[cmd] = (page.relative_to(ROOT), setup, files)
    return cases


SNAKEMAKE_CASES = _snakemake_cases()


def test_the_pages_show_commands():
    """The extraction finds what the pages show (guards the tests below against matching nothing)."""
    cmds = list(SNAKEMAKE_CASES)
    assert len(cmds) >= 15
    assert any("config/paper.yaml" in c for c in cmds) and any("--profile workflow/profiles/slurm" in c for c in cmds)
    assert any("mine.yaml" in c for c in cmds)
    esta = [c for p in PAGES for c in _page_commands(p)[1]] + [t for p in PAGES for t in _page_commands(p)[2]]
    assert any("info --timm" in c for c in esta)
    assert any("predict" in c for c in esta)


def _as_dry_run(cmd: str) -> str:
    """The command with the repository's snakemake and ``-n`` right after it (so it cannot become a
    target or a config file), any pipe behind it dropped."""
    cmd = cmd.split(" | ")[0]
    return COMMAND.sub(lambda m: f"{shlex.quote(str(BIN / 'snakemake'))} -n", cmd, count=1)


REPORT_SKIP = "--report bundles the outputs of a finished run: it has no dry run, and the run it reports takes 29 min"


def _dry_run(cmd: str, work: Path) -> subprocess.CompletedProcess:
    _, setup, files = SNAKEMAKE_CASES[cmd]
    make_workdir(work)
    for name, body in files.items():
        (work / name).write_text(body)
    script = "set -e\n" + "\n".join(setup) + "\n" + _as_dry_run(cmd) + "\n"
    return subprocess.run(["bash", "-c", script], cwd=work, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dry_runs(request, tmp_path_factory) -> dict:
    """The dry runs of every command this session selected, two at a time (each builds a whole DAG in
    one busy process, 10-75 s on the 2-core CI box; side by side they take half the wall time)."""
    cmds = [
        item.callspec.params["cmd"]
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_snakemake_command_of_the_guide_dry_runs"
        and "--report" not in item.callspec.params["cmd"].split()
    ]
    root = tmp_path_factory.mktemp("dry_runs")
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        procs = pool.map(lambda ic: _dry_run(ic[1], root / str(ic[0])), enumerate(cmds))
        return dict(zip(cmds, procs))


@pytest.mark.workflow
@pytest.mark.parametrize("cmd", list(SNAKEMAKE_CASES), ids=lambda c: f"{SNAKEMAKE_CASES[c][0]}: {c[:80]}")
def test_snakemake_command_of_the_guide_dry_runs(cmd, dry_runs):
    """Each snakemake command of README and the guide plans its jobs as written, with ``-n`` added;
    the config files its page writes (printf lines, ``# name.yaml`` blocks) are written first.
    Paper-scale commands plan without their data (data and weights are checked by rules)."""
    if "--report" in cmd.split():
        pytest.skip(REPORT_SKIP)
    proc = dry_runs[cmd]
    page = SNAKEMAKE_CASES[cmd][0]
    assert proc.returncode == 0, f"{page}: `{cmd}` fails as a dry run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _as_written(cmd: str) -> str:
    return re.sub(r"^(\.venv/bin/)?python\b", shlex.quote(sys.executable), cmd)


@pytest.mark.parametrize("page", [p for p in PAGES if _page_commands(p)[1] or _page_commands(p)[2]], ids=lambda p: p.name)
def test_esta_commands_of_the_guide_run_on_the_smoke_outputs(page, smoke):
    """Every ``python -m esta`` command of a page runs as written in the smoke run's folder. In a
    transcript (``$ `` lines followed by their output) a command shown ending in ``error:`` must fail
    with exit code 2 and that message, the others succeed and answer the files they show, in order."""
    work = smoke.parent
    _, esta, transcripts, _, _ = _page_commands(page)
    for cmd in esta:
        proc = subprocess.run(["bash", "-c", _as_written(cmd)], cwd=work, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{page.name}: `{cmd}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert proc.stdout.strip(), f"{page.name}: `{cmd}` printed nothing"
    for body in transcripts:
        env: list[str] = []  # variable assignments of the transcript, kept for the commands after them
        lines = body.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            cmd = line[2:]
            if re.fullmatch(r"\w+=\S+", cmd):
                env.append(cmd)
                continue
            shown = []
            for out in lines[i + 1 :]:
                if out.startswith("$ "):
                    break
                shown.append(out)
            proc = subprocess.run(
                ["bash", "-c", "\n".join([*env, _as_written(cmd)])], cwd=work, capture_output=True, text=True, timeout=600
            )
            if shown and shown[0].startswith("error:"):
                assert proc.returncode == 2, f"{page.name}: `{cmd}` should fail with exit code 2:\n{proc.stderr}"
                # the message the page shows, up to its details (a smoke palette may hold other ids)
                assert proc.stderr.strip().split(":")[:2] == shown[0].split(":")[:2], proc.stderr
            else:
                assert proc.returncode == 0, f"{page.name}: `{cmd}` failed:\n{proc.stderr[-2000:]}"
                files = [s.split("\t")[0] for s in shown if "\t" in s]
                assert [s.split("\t")[0] for s in proc.stdout.splitlines() if "\t" in s] == files, proc.stdout
