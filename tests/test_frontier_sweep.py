"""The frontier sweep at toy size: every method runs and is evaluated at its steps, results.csv and the figure are
written, a finished sweep is reused, and an interrupted one continues without redoing finished work."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from test_frontier_task import toy

from dpo_teach import cli, plots
from dpo_teach.frontier import statistics, sweep
from dpo_teach.frontier.methods import sweep_methods
from dpo_teach.frontier.presets import preset
from dpo_teach.frontier.results import COLUMNS, load_results, summary_table

TRAINER_FUNCTIONS = ("train_dpo", "train_sft", "train_ppo", "train_unlikelihood")


def toy_sweep(config=None):
    """The toy task with every method of the sweep at one hyper-parameter value, each 3 steps, evaluated at 2 and 3."""
    config = toy(config or preset("tiny"))
    config.dpo_betas, config.ppo_target_kls, config.unlikelihood_alphas = (0.5,), (4.0,), (0.5,)
    config.frontier_eval_every, config.ppo_eval_every = 2, 2
    small = dict(
        max_steps=3, batch_size=2, eval_every=3, eval_batch_size=8, max_length=32, max_prompt_length=12,
        warmup_steps=0, learning_rate=1e-3, mixed_precision="no",
    )  # fmt: skip
    config.preferred_ft = dataclasses.replace(config.preferred_ft, **small)
    config.unlikelihood = dataclasses.replace(config.unlikelihood, **small)
    config.reward_model = dataclasses.replace(config.reward_model, **small, keep_best=False)  # toy: few held-out pairs
    config.ppo = dataclasses.replace(
        config.ppo, max_steps=3, batch_size=4, num_minibatches=2, ppo_epochs=1, max_new_tokens=8, learning_rate=1e-3,
        mixed_precision="no",
    )  # fmt: skip
    return config


def expected_rows(config) -> list[tuple[str, int]]:
    """(run, step) of every row of a toy sweep: SFT, best-of-N, then each run at steps 2 and 3."""
    best_of = [(f"best-of-n-n-{n}", 0) for n in config.best_of_n]
    return [("sft", 0), *best_of] + [(method.run, step) for method in sweep_methods(config) for step in (2, 3)]


def test_evaluation_steps():
    assert sweep.evaluation_steps(200, 50) == [50, 100, 150, 200]
    assert sweep.evaluation_steps(130, 50) == [50, 100, 130]
    assert sweep.evaluation_steps(3, 5) == [3]
    with pytest.raises(ValueError, match="frontier_eval_every"):
        sweep.evaluation_steps(10, 0)


def test_the_sweep_writes_one_row_per_evaluated_checkpoint_and_is_reused(tmp_path, monkeypatch):
    config = toy_sweep()
    rows = sweep.run_frontier(config, tmp_path, progress_bar=False)
    saved = load_results(tmp_path / "results.csv")
    assert list(saved[0]) == list(COLUMNS)
    assert [(row["run"], row["step"]) for row in saved] == expected_rows(config)
    assert [row["run"] for row in rows] == [row["run"] for row in saved]
    sft, best_of = saved[0], saved[1 : 1 + len(config.best_of_n)]
    assert sft["kl"] == 0.0 and sft["samples"] == config.num_eval_prompts  # pi_ref against itself: exactly 0
    assert all(row["kl"] > 0 and 0 <= row["reward"] <= 1 and row["reward_sem"] >= 0 for row in saved[1:])
    assert [row["samples"] for row in best_of] == [n * config.num_eval_prompts for n in config.best_of_n]
    assert [row["kl"] for row in best_of] == [pytest.approx(math.log(n) - (n - 1) / n) for n in config.best_of_n]
    assert best_of[0]["reward"] <= best_of[-1]["reward"]  # the best of 4 includes the best of the first 2
    trained = saved[1 + len(config.best_of_n) :]
    assert all(row["samples"] == config.num_eval_prompts for row in trained)
    run = sweep_methods(config)[0].run
    assert (tmp_path / run / "samples" / "step-00000003.jsonl").exists()
    assert all(f"{method.run} " in summary_table(saved) for method in sweep_methods(config))
    plots.frontier_figure(saved, statistics.envelopes(saved)).savefig(tmp_path / "frontier.png")

    # a second sweep over the same directory trains and evaluates nothing
    for target in [
        *(f"dpo_teach.frontier.methods.{name}" for name in TRAINER_FUNCTIONS),
        "dpo_teach.frontier.task.train_reward_model",
        "dpo_teach.frontier.sweep.SentimentTask.evaluate",
    ]:
        monkeypatch.setattr(target, lambda *args, target=target, **kwargs: pytest.fail(f"{target} ran"))
    assert sweep.run_frontier(config, tmp_path, progress_bar=False) == rows


def test_an_interrupted_run_continues_from_its_checkpoint_without_evaluating_again(tmp_path, monkeypatch, capsys):
    """DPO killed in step 3, after its step-2 evaluation: the next sweep resumes training at step 2 and evaluates
    only step 3."""
    from dpo_teach.train import dpo as dpo_module

    config = toy_sweep()
    original_call, calls = dpo_module.DPOObjective.__call__, []

    def interrupted(self, model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original_call(self, model, batch)

    monkeypatch.setattr(dpo_module.DPOObjective, "__call__", interrupted)
    task = sweep.SentimentTask(config, tmp_path, progress_bar=False)
    method = sweep_methods(config)[0]
    with pytest.raises(KeyboardInterrupt):
        sweep.train_method(task, method)
    monkeypatch.undo()
    evaluated = []
    original_evaluate = sweep.SentimentTask.evaluate
    monkeypatch.setattr(
        sweep.SentimentTask,
        "evaluate",
        lambda self, policy: evaluated.append(policy) or original_evaluate(self, policy),
    )
    capsys.readouterr()
    _, rows = sweep.train_method(sweep.SentimentTask(config, tmp_path, progress_bar=False), method)
    assert "resuming from step 2" in capsys.readouterr().out
    assert [row["step"] for row in rows] == [2, 3] and len(evaluated) == 1


def test_the_cli_writes_the_table_the_figure_the_claims_and_the_record(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dpo_teach.frontier.presets.quick", lambda config: toy_sweep(config))
    assert cli.main(["frontier", "--preset", "tiny", "--quick", "--out", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert (tmp_path / "results.csv").exists() and (tmp_path / "frontier.png").stat().st_size > 10_000
    assert "reward" in output and "KL (nats)" in output and f"wrote {tmp_path / 'results.csv'}" in output
    assert "DPO's reward rises as beta falls" in output
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert [claim["claim"].split(" ")[0] for claim in claims] == ["DPO's", "DPO", "DPO", "DPO"]
    record = json.loads((tmp_path / "run.json").read_text())
    truth = record["ground_truth_reward"]
    assert truth["kind"] == "classifier trained here"
    assert 0 <= truth["classifier_accuracy_whole_reviews"] <= 1 and 0 <= truth["vader_accuracy_prefixes"] <= 1
    assert set(record["reward_model"]) >= {"held_out_accuracy", "step"}
    targets = record["ppo_kl_targets"]
    assert [target["run"] for target in targets] == ["ppo-gt-target_kl-4", "ppo-rm-target_kl-4"]
    assert all(target["ratio"] == pytest.approx(target["kl"] / 4.0) for target in targets)
    assert record["settings"]["reward"] == "classifier" and record["seeds"] == 1
