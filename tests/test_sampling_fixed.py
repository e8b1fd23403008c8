"""Sampler kind "fixed" (esta.sampling; issue 31, the dip control): one stitch trained alone with a
palette's optimizer steps."""

from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

from esta.sampling import SamplerConfig, StitchSampler

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_fixed_draws_its_stitch_every_step_and_counts_only_its_visits():
    sampler = StitchSampler(7, 50, SamplerConfig(kind="fixed", stitch=4, warmup_frac=0.1), seed=3)
    before = sampler.generator.get_state().clone()
    for step in range(50):
        sid = sampler.sample(step)
        assert sid == 4
        sampler.update(sid, torch.tensor(0.5 + step), step, loss=torch.tensor(1.0))
    assert torch.equal(sampler.generator.get_state(), before)  # no draw consumed the generator
    stats = sampler.stats().set_index("stitch_id")
    assert stats.loc[4, "visits"] == 50 and stats["visits"].sum() == 50
    assert stats.drop(index=4)["importance"].isna().all()
    probs = sampler.probs(0)
    assert probs[4] == 1.0 and probs.sum() == 1.0


def test_other_kinds_keep_their_settings_and_draws():
    # the settings written to train.json and the draws of the existing kinds are unchanged by the new key
    assert "stitch" not in SamplerConfig(kind="grouped").to_dict()
    assert SamplerConfig(kind="fixed", stitch=2).to_dict()["stitch"] == 2
    a = StitchSampler(5, 20, SamplerConfig(kind="uniform"), seed=1)
    draws = [a.sample(s) for s in range(20)]
    g = torch.Generator().manual_seed(1)
    assert draws == [int(torch.multinomial(torch.full((5,), 0.2, dtype=torch.float64), 1, generator=g)) for _ in range(20)]


@pytest.mark.parametrize("kw, words", [
    (dict(kind="fixed"), "needs sampler.stitch"),
    (dict(kind="fixed", stitch=-1), "needs sampler.stitch"),
    (dict(kind="grouped", stitch=3), "only read by kind 'fixed'"),
])
def test_bad_fixed_settings_name_the_key(kw, words):
    with pytest.raises(ValueError, match=words):
        SamplerConfig(**kw)


def test_fixed_stitch_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="not a stitch id of this table"):
        StitchSampler(5, 10, SamplerConfig(kind="fixed", stitch=5))


def test_schema_requires_a_stitch_for_kind_fixed():
    sampler = yaml.safe_load(SCHEMA.read_text())["properties"]["esta"]["properties"]["sampler"]
    base = dict(beta=0.9, warmup_frac=0.1, tau=1.0, eps=0.1)
    jsonschema.validate(dict(base, kind="grouped"), sampler)
    jsonschema.validate(dict(base, kind="fixed", stitch=12), sampler)
    with pytest.raises(jsonschema.ValidationError, match="stitch"):
        jsonschema.validate(dict(base, kind="fixed"), sampler)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(base, kind="fixed", stitch=None), sampler)
