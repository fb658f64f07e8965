"""Pipeline files: every shipped pipeline parses into its stages' own options."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from legodask import pipeline

PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.toml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_shipped_pipelines_parse_into_stage_options(path, tmp_path):
    spec = pipeline.load(path)
    assert {"ingest", "prerelax", "metrics"} <= set(spec)
    for stage, (module, _) in pipeline.STAGES.items():
        for opts in (spec[stage] if isinstance(spec.get(stage), list) else [spec.get(stage)]):
            if opts is not None:
                args = pipeline.stage_args(importlib.import_module(module), str(tmp_path), opts)
                assert args.run == str(tmp_path)


def test_overrides_and_unknown_stages(tmp_path):
    spec = pipeline.load(PIPELINES[0], ["sample.n=50", "rank.models=tersoff", "augment.check=none"])
    assert spec["sample"]["n"] == 50 and spec["rank"]["models"] == "tersoff"
    args = pipeline.stage_args(importlib.import_module("legodask.stages.sample"), "R", spec["sample"])
    assert args.n == 50
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest]\n[polish]\n")
    with pytest.raises(ValueError, match="unknown stages"):
        pipeline.load(bad)
    with pytest.raises(ValueError, match="stage.option=value"):
        pipeline.load(PIPELINES[0], ["nonsense"])
