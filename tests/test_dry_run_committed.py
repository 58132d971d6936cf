"""The committed dry run of the paper preset (docs/dry-run/paper.json): every stage ran at the preset's shapes, and
the README quotes its tables as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpo_teach.frontier.dry_run_report import format_bill, format_measured
from dpo_teach.frontier.presets import preset

ROOT = Path(__file__).resolve().parent.parent
REPORT = json.loads((ROOT / "docs" / "dry-run" / "paper.json").read_text())
MEASURED = ("sft", "pairs", "reward-model", "dpo", "ppo-4-layers", "ppo-8-layers", "evaluation")


def test_every_stage_ran_at_the_paper_presets_shapes():
    paper, plan, stages = preset("paper"), REPORT["plan"], REPORT["stages"]
    assert REPORT["preset"] == "paper" and plan["policy_parameters"] == 774_030_080 and plan["policy_layers"] == 36
    assert plan["sft"]["max_length"] == paper.sft.max_length
    assert plan["dpo"]["pairs"] == plan["reward_model"]["pairs"] == paper.dpo.batch_size == 64
    assert (plan["ppo"]["rollouts"], plan["ppo"]["epochs"], plan["ppo"]["minibatches"]) == (64, 4, 4)
    assert plan["max_new_tokens"] == paper.sampling.max_new_tokens and plan["samples_per_prompt"] == 4
    for name in MEASURED:
        assert stages[name]["flops"] > 0 and stages[name]["peak_memory_bytes"] > 0, name
    ppo = stages["ppo"]
    assert ppo["extrapolated_from_layers"] == [4, 8]
    assert ppo["parameters"] == pytest.approx(774_030_080)  # parameters are linear in depth: the check is exact


def test_the_readme_quotes_the_committed_tables():
    readme = (ROOT / "README.md").read_text()
    lines = format_measured(REPORT).splitlines()[2:] + format_bill(REPORT).splitlines()[2:]
    missing = [line for line in lines if line.strip() and line not in readme]
    assert not missing, missing


def test_the_readme_says_how_long_the_dry_run_took():
    seconds = sum(stage["process_seconds"] for stage in REPORT["stages"].values() if stage.get("process_seconds"))
    assert f"took {seconds:,.0f} s" in (ROOT / "README.md").read_text()
