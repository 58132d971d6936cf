"""The GPU bill of a preset's whole sweep, priced from what its dry run measured (``dpo_teach.frontier.dry_run``).

The dry run counts the FLOPs of one unit of each kind of work (an SFT row, an optimizer step of the reward
model and of DPO, a PPO step, a prompt's samples, a prompt's evaluation, a pair's reference log-probs). The
sweep is those units times the preset's counts: its steps, prompts, pairs, runs (``sweep_methods``) and
evaluations (``evaluation_steps``). Three kinds of figure come out, each labelled where it is shown:

- *measured here*: wall time, peak memory, disk and counted FLOPs of the units, on the machine of the report;
- *derived*: units the dry run does not run, from ones it does, by a stated rule: the trainers' held-out
  evaluations are forward passes, priced at the reference pass's measured forward per pair (DPO, Preferred-FT,
  Unlikelihood) or at a third of a training step's FLOPs for the same rows (SFT, reward model: a matrix multiply's
  backward is two multiplies of its size; attention's is 2.5, so this errs high by a few percent); Preferred-FT's
  step is DPO's on the chosen half of the rows, Unlikelihood's is DPO's; PPO with the ground-truth reward is
  PPO-RM's step with the classifier in place of the reward model;
- *extrapolated*: GPU hours, the counted FLOPs at ``gpus.MFU`` of a datasheet's bf16 peak, and for sampling at
  least the time to read the weights once per new token (``gpus.sampling_floor_seconds``); "fits" compares the
  measured peak (float32 here: the same weights, gradients and optimizer state as bf16 autocast on a GPU, and
  larger activations) with the GPU's memory.
"""

from __future__ import annotations

import math

from dpo_teach import gpus
from dpo_teach.frontier.methods import eval_every, sweep_methods, trainer
from dpo_teach.frontier.presets import TaskConfig
from dpo_teach.frontier.sweep import evaluation_steps
from dpo_teach.frontier.task import HELD_OUT_PAIR_FRACTION, SentimentTask

POLICY, VALUE, REWARD_MODEL = "GPT2LMHeadModel", "GPT2ForTokenClassification", "GPT2ForSequenceClassification"
LINEAR_FIELDS = ("flops", "peak_memory_bytes", "disk_peak_bytes", "disk_kept_bytes", "parameters")
FORWARD_SHARE = 1 / 3
"""A forward pass's share of a training step's FLOPs on the same rows (backward: two multiplies per multiply)."""
WEIGHT_BYTES = 4
"""Bytes per parameter read per generated token: the task loads its models in float32, autocast or not."""


def ppo_at_full_depth(plan, stages: dict) -> dict:
    """The PPO stage at the policy's depth: measured there, or extrapolated linearly in the number of layers from
    the two depths it ran at (every block is the same, so FLOPs and parameters are exactly linear in depth).

    Wall time is not extrapolated (``seconds`` and ``step_seconds`` are None): on a shared machine it follows the
    load of the moment as much as the depth (the committed paper dry run's 8-layer PPO ran faster than its 4-layer
    one), and a line through two such times can even fall below zero."""
    measured = [(layers, stages[f"ppo-{layers}-layers"]) for layers in plan.ppo_layers]
    if [layers for layers, _ in measured] == [plan.policy_layers]:
        return measured[0][1] | {"extrapolated_from_layers": []}
    (x1, low), (x2, high) = measured[0], measured[-1]

    def at_depth(a: float, b: float) -> float:
        return a + (b - a) * (plan.policy_layers - x1) / (x2 - x1)

    result = {name: at_depth(low[name], high[name]) for name in LINEAR_FIELDS}
    models = low["flops_by_model"].keys() | high["flops_by_model"].keys()
    result["flops_by_model"] = {name: at_depth(low["flops_by_model"].get(name, 0), high["flops_by_model"].get(name, 0))
                                for name in models}  # fmt: skip
    return result | {
        "seconds": None,
        "step_seconds": None,
        "layers": plan.policy_layers,
        "extrapolated_from_layers": [x1, x2],
        "memory": low["memory"],
    }


def _step_seconds(stage: dict) -> float | None:
    """Seconds of the stage's measured steps; None for a PPO extrapolated in depth (``ppo_at_full_depth``)."""
    return stage.get("step_seconds", sum(step["step_seconds"] for step in stage.get("steps", [])))


def _per(seconds: float | None, units: int) -> float | None:
    return None if seconds is None else seconds / units


def unit_costs(report: dict) -> dict:
    """FLOPs (counted) and CPU seconds (measured here) of one unit of each kind of work."""
    stages, plan = report["stages"], report["plan"]
    sft, pairs, rm, dpo, ppo, evaluation = (stages[name] for name in
                                           ("sft", "pairs", "reward-model", "dpo", "ppo", "evaluation"))  # fmt: skip
    rows = plan["sft"]["rows"] * len(sft["steps"])
    reference = next(mark["flops"] for mark in dpo["marks"] if mark["label"] == "step 0")
    classifier = (pairs["flops"] - pairs["flops_by_model"].get(POLICY, 0)) / pairs["samples"]
    ppo_steps = plan["ppo"]["steps"]
    return {
        "sft_row": {"flops": sft["flops"] / rows, "seconds": _step_seconds(sft) / rows},
        "pair_prompt": {"flops": pairs["flops"] / pairs["prompts"], "seconds": pairs["seconds"] / pairs["prompts"]},
        "reward_per_text": {"flops": classifier},
        "reward_model_step": {"flops": rm["flops"] / len(rm["steps"]), "seconds": _step_seconds(rm) / len(rm["steps"])},
        "reference_pair": {"flops": reference / dpo["reference_pairs"]},
        "dpo_step": {"flops": (dpo["flops"] - reference) / len(dpo["steps"]),
                     "seconds": _step_seconds(dpo) / len(dpo["steps"])},
        "ppo_step": {"flops": ppo["flops"] / ppo_steps,
                     "seconds": _per(_step_seconds(ppo), ppo_steps),
                     "reward_model_flops": ppo["flops_by_model"].get(REWARD_MODEL, 0) / ppo_steps},
        "eval_prompt": {"flops": evaluation["flops"] / evaluation["prompts"],
                        "seconds": evaluation["seconds"] / evaluation["prompts"]},
    }  # fmt: skip


def _per_micro_batch(trainer: dict) -> int:
    return trainer["pairs"] // trainer["micro_batches"]


def _evaluations(interval: int, max_steps: int) -> int:
    """Held-out evaluations of a trainer (``dpo_teach.train.run.every``): step 0, every ``interval``, the last."""
    return len({0, *range(interval, max_steps + 1, interval), max_steps}) if interval > 0 else 0


def _row(stage: str, work: str, flops: float, peak: float | None, fits_with: str, derived: str = "",
         token_steps: float = 0.0, parameters: int = 0) -> dict:  # fmt: skip
    """One line of the bill: hours on each GPU at MFU, raised to the weight-read floor when the stage samples."""
    hours, floor = {}, {}
    for key, gpu in gpus.GPUS.items():
        floor[key] = gpus.sampling_floor_seconds(WEIGHT_BYTES * parameters, token_steps, gpu) / 3600
        hours[key] = max(gpus.compute_seconds(flops, gpu) / 3600, floor[key])
    fits = None if peak is None else gpus.fits(peak, gpus.GPUS["A100"])
    return {"stage": stage, "work": work, "flops": flops, "hours": hours, "sampling_floor_hours": floor,
            "token_steps": token_steps, "peak_memory_bytes": peak, "fits_80gb": fits, "fits_with": fits_with,
            "derived": derived}  # fmt: skip


def gpu_bill(config: TaskConfig, report: dict) -> dict:
    """The whole sweep of the preset ``config`` (full sizes), priced with the dry run's ``report``."""
    units, stages, plan = unit_costs(report), report["stages"], report["plan"]
    task = SentimentTask(config, "unused")  # the sweep's runs and their trainers' configs; nothing is loaded
    runs = {method.run: (method, trainer(task, method)[0]) for method in sweep_methods(config)}
    prompts, per_prompt = config.num_pair_prompts, math.comb(config.samples_per_prompt, 2)
    held_out_prompts = max(1, int(HELD_OUT_PAIR_FRACTION * prompts))
    train_pairs, eval_pairs = per_prompt * (prompts - held_out_prompts), per_prompt * held_out_prompts
    parameters, new_tokens = plan["policy_parameters"], config.sampling.max_new_tokens
    sampling_batches = math.ceil(prompts * config.samples_per_prompt / config.sampling.batch_size)
    rows = []

    sft, sft_row = config.sft, units["sft_row"]["flops"]
    sft_evals = _evaluations(sft.eval_every, sft.max_steps) * config.sft_eval_reviews
    rows.append(_row(
        "SFT", f"{sft.max_steps} steps x {sft.batch_size} reviews x {sft.max_length} tokens; {sft_evals:,} held-out "
        "reviews", sft.max_steps * sft.batch_size * sft_row + sft_evals * FORWARD_SHARE * sft_row,
        stages["sft"]["peak_memory_bytes"], f"{plan['sft']['rows'] // plan['sft']['micro_batches']} review(s) per "
        f"micro-batch, {sft.optimizer}", "held-out reviews: forward = 1/3 of a step's row",
    ))  # fmt: skip
    rows.append(_row(
        "pairs", f"{prompts:,} prompts x {config.samples_per_prompt} samples x {new_tokens} tokens, scored",
        prompts * units["pair_prompt"]["flops"], stages["pairs"]["peak_memory_bytes"], "sampling batch "
        f"{config.sampling.batch_size}", token_steps=sampling_batches * new_tokens, parameters=parameters,
    ))  # fmt: skip
    rm, rm_step = config.reward_model, units["reward_model_step"]["flops"]
    rm_evals = _evaluations(rm.eval_every, rm.max_steps) * eval_pairs
    rows.append(_row(
        "reward model", f"{rm.max_steps:,} steps x {rm.batch_size} pairs; {rm_evals:,} held-out pairs",
        rm.max_steps * rm_step + rm_evals * FORWARD_SHARE * rm_step / rm.batch_size,
        stages["reward-model"]["peak_memory_bytes"], f"{_per_micro_batch(plan['reward_model'])} pairs per "
        f"micro-batch, {rm.optimizer}", "held-out pairs: forward = 1/3 of a step's pair",
    ))  # fmt: skip
    rows.append(_row(
        "reference log-probs", f"{train_pairs + eval_pairs:,} pairs, once (every DPO run reads the cache)",
        (train_pairs + eval_pairs) * units["reference_pair"]["flops"], stages["dpo"]["peak_memory_bytes"],
        "as DPO",
    ))  # fmt: skip
    held_out = "held-out pairs: the reference pass's measured forward per pair"
    for method, label, share, derived in (
        ("dpo", "DPO", 1.0, held_out),
        ("preferred-ft", "Preferred-FT", 0.5, f"DPO's step and {held_out}, on the chosen half of the rows"),
        ("unlikelihood", "Unlikelihood", 1.0, f"DPO's step (the same rows, no reference); {held_out}"),
    ):  # fmt: skip
        configs = [trainer_config for run, trainer_config in runs.values() if run.method == method]
        steps = sum(trainer_config.max_steps for trainer_config in configs)
        evals = sum(_evaluations(c.eval_every, c.max_steps) for c in configs) * eval_pairs
        flops = share * (steps * units["dpo_step"]["flops"] + evals * units["reference_pair"]["flops"])
        rows.append(_row(
            label, f"{len(configs)} run(s) x {configs[0].max_steps:,} steps x {configs[0].batch_size} pairs; "
            f"{evals:,} held-out pairs", flops, stages["dpo"]["peak_memory_bytes"],
            f"{_per_micro_batch(plan['dpo'])} pairs per micro-batch, {configs[0].optimizer}", derived,
        ))  # fmt: skip
    ppo = stages["ppo"]
    depth = (f"extrapolated from {ppo['extrapolated_from_layers'][0]} and {ppo['extrapolated_from_layers'][1]} "
             "layers" if ppo["extrapolated_from_layers"] else "")  # fmt: skip
    gt_step = units["ppo_step"]["flops"] - units["ppo_step"]["reward_model_flops"]
    gt_step += config.ppo.batch_size * units["reward_per_text"]["flops"]
    ground_truth = "PPO-RM's step with the ground-truth reward's scoring in place of the reward model's"
    for method, label, step, derived in (
        ("ppo-rm", "PPO-RM", units["ppo_step"]["flops"], depth),
        ("ppo-gt", "PPO-GT", gt_step, ground_truth + (f"; {depth}" if depth else "")),
    ):  # fmt: skip
        configs = [trainer_config for run, trainer_config in runs.values() if run.method == method]
        steps = sum(trainer_config.max_steps for trainer_config in configs)
        rows.append(_row(
            label, f"{len(configs)} run(s) x {configs[0].max_steps:,} steps x {configs[0].batch_size} rollouts, "
            f"{configs[0].ppo_epochs} epochs x {configs[0].num_minibatches} minibatches", steps * step,
            ppo["peak_memory_bytes"], f"policy, value model, reference, AdamW; minibatch "
            f"{configs[0].batch_size // configs[0].num_minibatches}", derived, token_steps=steps * new_tokens,
            parameters=parameters,
        ))  # fmt: skip
    evaluations = 1 + sum(len(evaluation_steps(c.max_steps, eval_every(config, m))) for m, c in runs.values())
    eval_batches = evaluations * math.ceil(config.num_eval_prompts / config.sampling.batch_size)
    rows.append(_row(
        "evaluations", f"{evaluations} x {config.num_eval_prompts:,} prompts: sample, KL to pi_ref, reward",
        evaluations * config.num_eval_prompts * units["eval_prompt"]["flops"],
        stages["evaluation"]["peak_memory_bytes"], f"sampling batch {config.sampling.batch_size}",
        token_steps=eval_batches * new_tokens, parameters=parameters,
    ))  # fmt: skip
    if config.best_of_n:  # max(N) samples per held-out prompt, drawn and scored once for every N
        samples = max(config.best_of_n) * config.num_eval_prompts
        rows.append(_row(
            "best-of-N", f"{samples:,} samples ({max(config.best_of_n)} per held-out prompt) x {new_tokens} tokens, "
            "scored", samples * units["pair_prompt"]["flops"] / config.samples_per_prompt,
            stages["pairs"]["peak_memory_bytes"], f"sampling batch {config.sampling.batch_size}",
            "the pairs stage's measured cost per sample", token_steps=math.ceil(samples / config.sampling.batch_size)
            * new_tokens, parameters=parameters,
        ))  # fmt: skip
    total = {key: sum(row["hours"][key] for row in rows) for key in gpus.GPUS}
    return {"gpus": {key: gpu.__dict__ for key, gpu in gpus.GPUS.items()}, "mfu": gpus.MFU, "units": units,
            "rows": rows, "total_flops": sum(row["flops"] for row in rows), "total_hours": total,
            "disk": disk_budget(config, report, runs)}  # fmt: skip


def disk_budget(config: TaskConfig, report: dict, runs: dict) -> dict:
    """Disk of the whole sweep from the stages' measured sizes: what every stage keeps once done (SFT, pairs scaled
    to the preset's prompts, the reward model, each run's final weights), plus two of the largest checkpoint: a run
    keeps its newest checkpoint while writing the next (``keep_checkpoints`` 1). A stage's checkpoint is its sampled
    peak disk minus what it keeps (sampled every 0.2 s: it can miss part of the final weights being written
    next to it, so it errs low by at most their size)."""
    stages, plan = report["stages"], report["plan"]
    kept = {
        "SFT": stages["sft"]["disk_kept_bytes"],
        "pairs": stages["pairs"]["disk_kept_bytes"] * config.num_pair_prompts / plan["pair_prompts"],
        "reward model": stages["reward-model"]["disk_kept_bytes"],
    }
    for run, (method, _) in runs.items():
        kept[run] = stages["ppo" if method.method.startswith("ppo") else "dpo"]["disk_kept_bytes"]
    checkpoints = {name: stages[name]["disk_peak_bytes"] - stages[name]["disk_kept_bytes"]
                   for name in ("sft", "reward-model", "dpo", "ppo")}  # fmt: skip
    largest = max(checkpoints.values())
    return {"kept_bytes": kept, "total_kept_bytes": sum(kept.values()), "checkpoint_bytes": checkpoints,
            "budget_bytes": sum(kept.values()) + 2 * largest}  # fmt: skip
