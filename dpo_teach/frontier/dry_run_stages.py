"""One stage of the dry run, measured in a process of its own (``python -m dpo_teach.frontier.dry_run_stages``).

Each stage calls the code the sweep calls, on the dry run's config (``dpo_teach.frontier.dry_run.plan``):

    stand-ins     the Hub presets' models, tokenizer and dataset, built here (``dpo_teach.frontier.standins``)
    sft           SentimentTask.sft_policy: train_sft for the plan's steps
    pairs         SentimentTask.preference_pairs: samples of the SFT policy, scored by the ground-truth reward
    reward-model  SentimentTask.reward_model: train_reward_model for the plan's steps
    dpo           the sweep's DPO trainer (``methods.trainer``): reference log-probs, then the plan's steps
    ppo           train_ppo on the task's prompts with the learned reward (PPO-RM), at the policy's depth or fewer
                  layers (``dpo_teach.frontier.dry_run`` decides, and extrapolates)
    evaluation    SentimentTask.evaluate of the DPO policy: sampling, KL to pi_ref, ground-truth reward

inside a :class:`dpo_teach.footprint.Meter`: FLOPs (counted, by model), wall time and peak memory of this process.
Trainer callbacks mark each optimizer step, so the DPO stage's reference pass and its update are told apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from dpo_teach.footprint import Meter, memory_kind, resident_bytes
from dpo_teach.frontier.methods import Method, trainer
from dpo_teach.frontier.standins import build_stand_ins
from dpo_teach.frontier.task import SentimentTask
from dpo_teach.train.ppo import train_ppo


def _steps(output_dir: Path) -> list[dict]:
    """The per-step records of a trainer's metrics.jsonl: step seconds and, where logged, tokens."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    keep = ("step", "step_seconds", "tokens_per_second", "completion/length")
    return [{key: record[key] for key in keep if key in record} for record in records if "step_seconds" in record]


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def stand_ins(task: SentimentTask, plan, meter: Meter) -> dict:
    built = build_stand_ins(Path(plan.run_dir) / "stand-ins", **plan.stand_ins)
    return {"directories": dataclasses.asdict(built)}


def sft(task: SentimentTask, plan, meter: Meter) -> dict:
    final = task.sft_policy()
    return {"steps": _steps(final.parent), "rows": task.config.sft.batch_size}


def pairs(task: SentimentTask, plan, meter: Meter) -> dict:
    train_path, eval_path = task.preference_pairs()
    samples = len(task.pair_prompts) * task.config.samples_per_prompt
    return {"prompts": len(task.pair_prompts), "samples": samples, "train_pairs": _count_lines(train_path),
            "eval_pairs": _count_lines(eval_path)}  # fmt: skip


def reward_model(task: SentimentTask, plan, meter: Meter) -> dict:
    final = task.reward_model()
    return {"steps": _steps(final.parent)}


def dpo(task: SentimentTask, plan, meter: Meter) -> dict:
    config, train = trainer(task, Method("dpo", "beta", plan.beta))
    config = dataclasses.replace(config, output_dir=str(Path(plan.run_dir) / "dry-run-dpo"))
    train(config, [meter.callback])
    train_path, _ = task.preference_pairs()
    return {"steps": _steps(Path(config.output_dir)), "reference_pairs": _count_lines(train_path)}


def ppo(task: SentimentTask, plan, meter: Meter, layers: int) -> dict:
    """PPO-RM, the heavier of the two PPOs (its reward is a policy-sized model), at ``layers`` blocks: the SFT
    policy itself at its full depth, else a policy of its shape with fewer blocks and random weights."""
    config, _ = trainer(task, Method("ppo-rm", "target_kl", plan.ppo_target_kl))
    output_dir = Path(plan.run_dir) / f"dry-run-ppo-{layers}-layers"
    config = dataclasses.replace(config, output_dir=str(output_dir))
    sft_dir = task.sft_policy()
    architecture = AutoConfig.from_pretrained(sft_dir)
    if layers == architecture.n_layer:
        policy = task.sft_model()
    else:
        architecture.n_layer = layers
        torch.manual_seed(0)
        policy = AutoModelForCausalLM.from_config(architecture)
    prompts = SentimentTask(dataclasses.replace(task.config, num_pair_prompts=config.batch_size), task.run_dir)
    train_ppo(
        config, policy, task.tokenizer, prompts.pair_prompts[: config.batch_size], task.ppo_reward("reward model"),
        accelerator=task.accelerator, callbacks=[meter.callback],
    )  # fmt: skip
    return {"steps": _steps(output_dir), "layers": layers, "parameters": sum(p.numel() for p in policy.parameters())}


def evaluation(task: SentimentTask, plan, meter: Meter) -> dict:
    result = task.evaluate(Path(plan.run_dir) / "dry-run-dpo" / "final")
    return {"prompts": result.num_samples, "mean_reward": result.mean_reward, "kl": result.kl}


STAGES = {"stand-ins": stand_ins, "sft": sft, "pairs": pairs, "reward-model": reward_model, "dpo": dpo,
          "ppo": ppo, "evaluation": evaluation}  # fmt: skip


def measure_stage(name: str, plan, layers: int | None = None) -> dict:
    """Run stage ``name`` of ``plan`` (a :class:`dpo_teach.frontier.dry_run.Plan`) in this process, measured."""
    if plan.threads:
        torch.set_num_threads(plan.threads)
    task = SentimentTask(plan.config, plan.run_dir, progress_bar=False)
    device = torch.device(plan.device)
    baseline = resident_bytes()
    with Meter(device) as meter:
        details = STAGES[name](task, plan, meter, layers) if name == "ppo" else STAGES[name](task, plan, meter)
    return {
        "stage": name, "seconds": meter.seconds, "flops": meter.flops, "flops_by_model": meter.flops_by_model(),
        "marks": meter.marks, "peak_memory_bytes": meter.peak_memory_bytes, "memory": memory_kind(device),
        "resident_before_bytes": baseline, "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(), **details,
    }  # fmt: skip


if __name__ == "__main__":  # a child of dpo_teach.frontier.dry_run: STAGE PLAN_PICKLE RESULT_JSON [LAYERS]
    stage_name, plan_path, result_path, *depth = sys.argv[1:]
    stage_plan = pickle.loads(Path(plan_path).read_bytes())
    result = measure_stage(stage_name, stage_plan, int(depth[0]) if depth else None)
    Path(result_path).write_text(json.dumps(result, indent=2))
