"""The tiny LLaMA pair shipped in esta/llm/assets/tiny/ (esta.llm.shipped): every file matches the
manifest, the folder stays small, and an installed anchor is a working HF folder with the shipped
tokenizer, larger anchor better than the smaller on tasks A."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaForCausalLM

from esta.llm.anchors import family
from esta.llm.build import load_tokenizer
from esta.llm.shipped import MANIFEST, TOKENIZER_FILES, install, load_shipped, read_shipped, shipped_dir

FOLDER = shipped_dir("tiny")


def test_files_match_the_manifest_and_stay_small():
    manifest = read_shipped(FOLDER)  # sha256 and size of every listed file
    listed = {e["file"] for a in manifest["anchors"] for e in a["files"]} | {e["file"] for e in manifest["tokenizer"]}
    present = {p.name for p in FOLDER.iterdir()} - {MANIFEST}
    assert present == listed, present ^ listed
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 3_000_000
    assert manifest["command"].startswith("snakemake llm_ship_anchors --configfile config/upstream.yaml")
    assert set(TOKENIZER_FILES) <= listed
    names = [a["name"] for a in manifest["anchors"]]
    assert names == [s.name for s in family("tiny")]
    small, large = manifest["anchors"]
    assert large["params"] > small["params"] and large["tasks_a_em"] > small["tasks_a_em"]


def test_a_changed_file_is_refused(tmp_path):
    for p in FOLDER.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="does not match"):
        read_shipped(tmp_path)


def test_install_writes_a_loadable_folder(tmp_path):
    lm, entry = load_shipped(FOLDER, 1)
    install(FOLDER, 1, tmp_path / "anchor1", tmp_path / "anchor1.json")
    again = LlamaForCausalLM.from_pretrained(tmp_path / "anchor1", local_files_only=True)
    assert sum(p.numel() for p in again.parameters()) == entry["params"]
    for (n, a), b in zip(lm.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n
    tokenizer = load_tokenizer(tmp_path / "anchor1")
    assert tokenizer.get_vocab() == load_tokenizer(FOLDER).get_vocab()
    info = json.loads((tmp_path / "anchor1.json").read_text())
    assert info["value"] == entry["tasks_a_em"] and info["shipped"]["command"] == read_shipped(FOLDER)["command"]
