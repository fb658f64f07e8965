"""Pipeline files: every shipped pipeline parses into its stages' own options."""

from __future__ import annotations

from pathlib import Path

import pytest

from legodask import pipeline
from legodask.stages import STAGES

PIPELINES = sorted((Path(__file__).parents[1] / "pipelines").glob("*.toml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_shipped_pipelines_parse_into_stage_options(path, tmp_path):
    spec = pipeline.load(path)
    assert {"ingest", "prerelax", "metrics"} <= set(spec)
    for name, stage in STAGES.items():
        for opts in (spec[name] if isinstance(spec.get(name), list) else [spec.get(name)]):
            if opts is not None:
                assert stage.pipeline, name
                args = pipeline.stage_args(stage.load(), str(tmp_path), opts)
                assert args.run == str(tmp_path)


def test_overrides_and_unknown_stages(tmp_path):
    spec = pipeline.load(PIPELINES[0], ["sample.n=50", "rank.models=tersoff", "augment.check=none"])
    assert spec["sample"]["n"] == 50 and spec["rank"]["models"] == "tersoff"
    args = pipeline.stage_args(STAGES["sample"].load(), "R", spec["sample"])
    assert args.n == 50
    bad = tmp_path / "bad.toml"
    bad.write_text("[ingest]\n[polish]\n")
    with pytest.raises(ValueError, match="unknown stages"):
        pipeline.load(bad)
    with pytest.raises(ValueError, match="stage.option=value"):
        pipeline.load(PIPELINES[0], ["nonsense"])
