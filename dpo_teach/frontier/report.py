"""What a frontier run records about itself in ``run.json``, beside ``results.csv``: the settings it ran with, the
ground-truth reward and the reward model it used (with their held-out accuracies), each PPO run's target against
the KL it reached, and the machine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dpo_teach.frontier.presets import TaskConfig
from dpo_teach.frontier.results import final_rows


def ground_truth_record(config: TaskConfig, out: Path) -> dict:
    """The ground-truth reward: its kind and name, and for the classifier trained here its held-out accuracies
    (and VADER's on the same texts) from its stage's ``summary.json``."""
    if config.reward == "vader":
        return {"kind": "vader"}
    if config.reward == "classifier":
        summary = out / "reward-classifier" / "summary.json"
        return {"kind": "classifier trained here", **(json.loads(summary.read_text()) if summary.exists() else {})}
    return {"kind": "classifier", "name": config.reward, "output": config.reward_output}


def reward_model_record(out: Path) -> dict:
    """The reward model's held-out accuracy: of its kept best checkpoint, or of its last evaluation."""
    best = out / "reward-model" / "final" / "best.json"
    if best.exists():
        record = json.loads(best.read_text())
        return {"held_out_accuracy": record["eval/accuracy"], "step": record["step"], "kept": "best"}
    metrics = out / "reward-model" / "metrics.jsonl"
    evaluations = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    evaluations = [record for record in evaluations if "eval/accuracy" in record]
    if not evaluations:
        return {}
    return {"held_out_accuracy": evaluations[-1]["eval/accuracy"], "step": evaluations[-1]["step"], "kept": "last"}


def ppo_targets(rows: list[dict]) -> list[dict]:
    """Each PPO run's target KL against the KL of its last evaluated checkpoint (and their ratio)."""
    return [
        {"run": row["run"], "target_kl": row["value"], "kl": row["kl"], "kl_sem": row["kl_sem"],
         "ratio": row["kl"] / row["value"]}
        for row in final_rows(rows) if row["method"] in ("ppo-gt", "ppo-rm")
    ]  # fmt: skip


def run_record(config: TaskConfig, out: Path, rows: list[dict], **facts) -> dict:
    """``run.json``'s record of one invocation: ``facts`` (size, time, processes, machine) and what it used."""
    return {
        **facts,
        "ground_truth_reward": ground_truth_record(config, out),
        "reward_model": reward_model_record(out),
        "ppo_kl_targets": ppo_targets(rows),
        "settings": dataclasses.asdict(config),
    }
