"""The Stitched LLaMA palette (spec §11, §12, issue 24): saved, then loaded in a fresh process, every
stitch gives the trained model's logits, its export equals ``esta.llm.export``'s, ``generate`` answers
as the trained model does, and ``max_params`` selects by parameter count."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from conftest import ROOT
from safetensors.torch import load_file, save_file
from test_llm_stitch import left_padded_batch, tiny_anchors

from esta.__main__ import main
from esta.llm.build import assemble, stitched
from esta.llm.costs import stitch_costs
from esta.llm.export import load_stitch
from esta.llm.palette import load, write
from esta.llm.tasks import TASKS_B, make_records, train_tokenizer
from esta.palette import stitch_table

PST = dict(rank=2, alpha=4, dropout=0.0, targets=["q_proj", "v_proj"], stitch_biases=True)


@pytest.fixture(scope="module")
def palette(tmp_path_factory):
    """A tiny trained Stitched LLaMA (LoRA B, biases and stitching layers perturbed) and its palette."""
    root = tmp_path_factory.mktemp("llm_palette")
    tok = train_tokenizer(make_records(TASKS_B, 30, seed=0), vocab_size=300)
    folders = []
    for i, lm in enumerate(tiny_anchors(vocab=len(tok))):
        folders.append(root / f"anchor{i}")
        lm.save_pretrained(folders[-1])
    tok.save_pretrained(root / "tokenizer")
    net, _ = stitched(folders)
    model = assemble(net, PST).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad or name.startswith("net.stitch_layers."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    costs = stitch_costs([a for a in net.anchors], ["a0", "a1"], seq_len=16)
    deployed = pd.DataFrame(dict(stitch_id=[0, 2, 1], interval=[0, 1, 2], score=[None, 1.0, None],
                                 reason=["anchor", "interval", "anchor"]))
    latency = pd.DataFrame([dict(stitch_id=s, batch=b, median_ms=1.0 + s) for s in (0, 1, 2) for b in (1, 32)])
    test = pd.DataFrame(dict(stitch_id=[0, 1, 2], test_accuracy=[0.1, 0.3, 0.2]))
    table = stitch_table(costs, deployed, latency, test)
    folder = write(root / "palette", model, table, folders=folders, dtype="fp32", rule="depth", pst=PST,
                   tokenizer=root / "tokenizer", settings=dict(variant="default", seed=0))
    return folder, model, tok


CHILD = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import load_file, save_file
    from esta.llm.palette import load
    torch.set_num_threads(1)
    folder, batch, out, export_dir = sys.argv[1:5]
    b = load_file(batch)
    palette = load(folder)
    out_t = {str(s): palette.select(stitch_id=int(s))(b["ids"], b["mask"]) for s in palette.table["stitch_id"]}
    save_file(out_t, out)
    palette.select(max_params=float(sys.argv[5])).export(palette.stitch_id, export_dir)
    print(json.dumps(dict(stitch_id=palette.stitch_id, answer=palette.generate(["Reverse: 123"], max_new_tokens=6)[0])))
""")


def test_every_stitch_after_a_fresh_load_equals_the_trained_model_and_the_export(palette, tmp_path):
    folder, model, tok = palette
    ids, mask = left_padded_batch(2)
    save_file(dict(ids=ids, mask=mask), tmp_path / "batch.safetensors")
    params = pd.read_csv(folder / "stitches.csv").set_index("stitch_id")["params"]
    budget = params[2]  # the most expensive deployed stitch within it is stitch 2 (anchor 1 is larger)
    cmd = [sys.executable, "-c", CHILD, str(folder), str(tmp_path / "batch.safetensors"),
           str(tmp_path / "out.safetensors"), str(tmp_path / "export"), str(budget)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        assert len(got) == model.num_stitches
        for sid in range(model.num_stitches):
            # the palette serves the LoRA merged into W (as the export does): fp32 rounding of W + BA
            # instead of Wx + B(Ax), logits of magnitude ~3
            assert (got[str(sid)] - model(ids, mask, sid)).abs().max() <= 5e-5, sid
        assert (model.net(ids, mask, 2) - model(ids, mask, 2)).abs().max() > 1e-2  # the biases matter
        deployed, _ = load_stitch(tmp_path / "export" / "stitch2")
        assert (deployed(ids, mask) - model(ids, mask, 2)).abs().max() <= 5e-5
        assert (deployed(ids, mask) - got["2"]).abs().max() <= 1e-5  # the palette's stitch is its export
    from esta.llm.evaluate import greedy_answers
    from esta.llm.data import prompt

    result = json.loads(proc.stdout.strip().splitlines()[-1])  # data, parsed as data
    assert result["stitch_id"] == 2
    assert result["answer"] == greedy_answers(model, tok, [prompt(dict(instruction="Reverse: 123"))], 2, 6)[0]


def test_palette_holds_lora_biases_and_stitching_layers_not_the_anchors(palette):
    folder, model, _ = palette
    tensors = load_file(folder / "tensors.safetensors")
    assert any("lora_A" in k for k in tensors) and any(k.startswith("biases.") for k in tensors)
    assert any(k.startswith("net.stitch_layers.") and "base_layer" in k for k in tensors)
    assert not any(".embed_tokens." in k or ".mlp." in k for k in tensors)
    assert all(v.dtype == torch.float32 for v in tensors.values())


def test_generate_cli_and_a_budget_below_the_smallest_stitch(palette, capsys):
    folder, _, _ = palette
    assert main(["generate", str(folder), "--max-params", "1e12", "--max-new-tokens", "3", "Copy: 42"]) == 0
    assert capsys.readouterr().out.strip().endswith("stitch 1")  # the largest anchor fits any budget
    assert main(["generate", str(folder), "--max-params", "10", "Copy: 42"]) == 2
    assert "max_params = 10 is below the cheapest deployed stitch (id 0" in capsys.readouterr().err
    assert main(["predict", str(folder), "x.png"]) == 2  # an LLM palette classifies no images
    assert "does not classify images" in capsys.readouterr().err


def test_select_moves_only_the_active_stitchs_biases_and_every_stitch_equals_its_export(palette, tmp_path):
    folder, model, _ = palette
    served = load(folder)
    assert not any("lora_" in k for k in served.model.state_dict())  # the LoRA is merged away
    ids, mask = left_padded_batch(2)
    params = dict(served.model.net.named_parameters())
    exports = {}
    for sid in (2, 2, 0, 1, 2, 0):
        before = {k: v.clone() for k, v in params.items()}
        served.select(stitch_id=sid)
        moved = {k for k, v in params.items() if not torch.equal(before[k], v)}
        own = {k.replace(".base_layer.", ".") for k in model.biases_for(sid)}
        assert moved <= own and all(k.endswith(".bias") for k in moved), sid
        if sid not in exports:
            exports[sid] = load_stitch(served.export(sid, tmp_path))[0]
        with torch.no_grad():
            assert (served(ids, mask) - exports[sid](ids, mask)).abs().max() <= 1e-5, sid
            mine = served.model.generate(ids, mask, sid, 5)
            assert torch.equal(mine, exports[sid].generate(ids, mask, 5))  # the same tokens, prefill and decode


@pytest.fixture
def copied(palette, tmp_path, monkeypatch):
    """The palette and its anchor folders copied (same layout), and a record of every model build."""
    import esta.llm.palette

    root = shutil.copytree(palette[0].parent, tmp_path / "copy")
    calls = []
    real = esta.llm.palette.stitched
    monkeypatch.setattr(esta.llm.palette, "stitched", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root, calls


def refused(folder, capsys) -> str:
    assert main(["generate", str(folder), "--stitch-id", "2", "Copy: 42"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_a_bin_beside_the_recorded_weights_is_refused_before_transformers_reads_it(copied, capsys):
    root, calls = copied
    torch.save({}, root / "anchor1" / "pytorch_model.bin")
    err = refused(root / "palette", capsys)
    assert "anchors[1] (anchor1)" in err and "pytorch_model.bin" in err and "no sha256 record" in err
    assert calls == []


def test_a_swapped_anchor_file_or_tokenizer_file_is_refused(copied, capsys):
    root, calls = copied
    original = shutil.copytree(root / "anchor0", root / "original")

    def restore():
        shutil.rmtree(root / "anchor0")
        shutil.copytree(original, root / "anchor0")

    config = root / "anchor0" / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps"', '"rms_norm_eps" ', 1))  # same JSON, edited
    err = refused(root / "palette", capsys)
    assert "anchors[0] (anchor0)" in err and "config.json has sha256" in err
    restore()
    shutil.copyfile(root / "anchor1" / "model.safetensors", root / "anchor0" / "model.safetensors")  # swapped
    assert "model.safetensors has sha256" in refused(root / "palette", capsys)
    restore()
    (root / "palette" / "tokenizer" / "extra_tokens.json").write_text("{}")  # a file the loader could read
    assert "no sha256 record" in refused(root / "palette", capsys)
    assert calls == []
