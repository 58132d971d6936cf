"""The committed full tiny run (``docs/frontier/``, written by ``make demo``) is complete for the current tiny preset,
meets the acceptance of the frontier (DPO beats the SFT policy at every beta, and gains more as beta falls), and the
README quotes it as it is. The run itself takes ~20 minutes, so CI checks the committed output, and runs the same
code at quick size (notebook 7) and toy size (tests/test_frontier_sweep.py)."""

from __future__ import annotations

import json
from pathlib import Path

from dpo_teach.frontier.methods import eval_every, sweep_methods, trainer
from dpo_teach.frontier.presets import preset
from dpo_teach.frontier.results import final_rows, load_results
from dpo_teach.frontier.sweep import evaluation_steps
from dpo_teach.frontier.task import SentimentTask

RUN = Path(__file__).resolve().parent.parent / "docs" / "frontier"


def test_the_committed_run_covers_every_run_and_step_of_the_tiny_preset(tmp_path):
    config = preset("tiny")
    rows = load_results(RUN / "results.csv")
    task = SentimentTask(config, tmp_path, progress_bar=False)  # only to read each trainer's config: nothing runs
    expected = [("sft", 0)]
    for method in sweep_methods(config):
        max_steps = trainer(task, method)[0].max_steps
        expected += [(method.run, step) for step in evaluation_steps(max_steps, eval_every(config, method))]
    assert [(row["run"], row["step"]) for row in rows] == expected
    assert all(row["samples"] == config.num_eval_prompts for row in rows)
    run = json.loads((RUN / "run.json").read_text())
    assert run["preset"] == "tiny" and run["size"] == "full" and run["machine"]["cores"] >= 1


def test_dpo_beats_the_sft_policy_at_every_beta_and_gains_more_as_beta_falls():
    final = final_rows(load_results(RUN / "results.csv"))
    sft = next(row for row in final if row["run"] == "sft")
    dpo = sorted((row for row in final if row["method"] == "dpo"), key=lambda row: row["value"])
    assert [row["value"] for row in dpo] == sorted(preset("tiny").dpo_betas)
    assert all(row["reward"] > sft["reward"] for row in dpo)
    assert all(lower["reward"] > higher["reward"] for lower, higher in zip(dpo[:-1], dpo[1:], strict=True))


def test_the_readme_quotes_the_committed_run():
    readme = (RUN.parent.parent / "README.md").read_text()
    for row in final_rows(load_results(RUN / "results.csv")):
        if row["method"] in ("sft", "dpo"):
            assert f"{row['reward']:.3f}" in readme, row["run"]
