"""``python -m esta info`` (spec §2, §3, §5): the stitch table and trainable counts, no weights needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from esta.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "esta", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_info_json_for_the_paper_family():
    proc = run_cli("info", "--family", "vit-ti-s-b", "--num-classes", "100", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert isinstance(info, dict)
    assert info["n_stitches"] == 71
    assert info["family"] == "vit-ti-s-b" and info["num_classes"] == 100
    counts = info["trainable_params"]
    assert set(counts) == {"esta", "snnet"}
    assert 3_000_000 <= counts["esta"] <= 6_000_000 < 100_000_000 < counts["snnet"]
    records = info["stitches"]
    assert len(records) == 71
    assert all(set(r) == RECORD_KEYS for r in records)
    assert [r["stitch_id"] for r in records] == list(range(71))
    r24, r56 = records[24], records[56]
    assert (r24["front"], r24["end"], r24["j"], r24["k"], r24["depth"]) == (0, 1, 7, 7, 13)
    assert (r56["front"], r56["end"], r56["j"], r56["k"], r56["depth"]) == (1, 2, 6, 7, 12)
    assert r24["gmacs"] == pytest.approx(2.759, rel=5e-3)
    assert records[2]["gmacs"] == pytest.approx(17.583, rel=5e-3)


def test_info_unknown_family_fails_listing_the_known_ones():
    proc = run_cli("info", "--family", "vit-huge", "--json")
    assert proc.returncode != 0
    assert proc.stdout == ""
    for name in ("vit-ti-s-b", "deit-ti-s-b", "embedded", "vit-huge"):
        assert name in proc.stderr


def test_info_text_output(capsys):
    assert main(["info", "--family", "embedded", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "35 stitches" in out
    assert len([line for line in out.splitlines() if line.split()[0].isdigit()]) == 35


def test_info_json_for_the_paper_llama_pair():
    """The CLI dispatches on the family name: LLaMA-7B -> 13B has 31 depth-rule stitches + 2
    anchors (spec §11), parameters counted on the meta device, MACs per token."""
    proc = run_cli("info", "--family", "llama-7b-13b", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "llm" and info["rule"] == "depth" and info["macs_unit"] == "token"
    records = info["stitches"]
    assert info["n_stitches"] == len(records) == 33
    anchors = [r for r in records if r["front"] == r["end"]]
    assert [r["stitch_id"] for r in anchors] == [0, 1]
    assert anchors[0]["params"] == pytest.approx(6.738e9, rel=1e-3) and anchors[1]["params"] == pytest.approx(13.016e9, rel=1e-3)
    assert all(set(r) == RECORD_KEYS for r in records)
    assert all(r["k"] > r["j"] for r in records[2:])
    assert 20_000_000 < info["trainable_params"]["esta"] < 30_000_000  # spec §11: about 23.6 M


def test_info_refuses_a_rule_the_family_cannot_take():
    assert main(["info", "--family", "llama-7b-13b", "--rule", "paired"]) == 2  # 32 vs 40 layers
    assert main(["info", "--family", "embedded", "--rule", "depth"]) == 2


@pytest.mark.parametrize("argv, message", [
    (["predict"], "python -m esta predict: the following arguments are required: path, images"),
    (["export", "somewhere", "out"], "the following arguments are required: --stitch-id"),
    (["profile", "p", "--runtime", "tensorrt"], "argument --runtime: invalid choice: 'tensorrt'"),
    (["info"], "one of the arguments --family --timm is required"),
    (["palette", "/no/such/palette"], "/no/such/palette is not a palette: palette.json is missing"),
    (["generate", "/no/such/palette", "--stitch-id", "x", "hi"], "argument --stitch-id: invalid int value: 'x'"),
])
def test_every_usage_error_is_one_stderr_line_and_exit_2(argv, message, capsys):
    from esta.__main__ import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.splitlines()) == 1
