"""``dpo-teach frontier --dry-run``: every stage of a preset at its real shapes for a step or two, measured.

The sweep of the ``paper`` preset is hours of GPU time; its dry run checks, on any machine, that every stage
runs at the preset's shapes and measures what each costs, so that the GPU bill (``dpo_teach.frontier.bill``)
comes from counted FLOPs and measured memory instead of estimates. The plan (:func:`make_plan`) is the preset
with its names replaced by stand-ins of the same shapes (``dpo_teach.frontier.standins``; the Hub is not
needed) and its sizes cut to a few steps:

- SFT: ``steps`` steps of ``sft_rows`` reviews at the preset's ``max_length`` (512 tokens each); FLOPs and time
  per row do not depend on the batch, so the bill scales them to the preset's batch of 64;
- pairs: ``pair_prompts`` prompts, the preset's 4 samples each at its completion length, scored by the reward;
- reward model and DPO: ``steps`` steps at the preset's batch (64 pairs), in micro-batches of
  ``pairs_per_micro_batch`` (gradient accumulation: the same update, less memory);
- PPO: ``steps`` of the preset's PPO steps (a rollout of 64 prompts, then its epochs of minibatch updates), with
  the reward model as the reward (PPO-RM). When PPO's three models and its optimizer state cannot fit this machine
  (gpt2-large: 36 bytes per parameter, 28 GB), it runs at 1/9 and 2/9 of the policy's depth (4 and 8 of gpt2-large's
  36 layers) with every other shape unchanged, and FLOPs, time, memory and disk are extrapolated linearly in the
  number of layers (each transformer block costs the same);
- evaluation: ``eval_prompts`` held-out prompts, as every evaluation of the sweep does them.

The trainers' own held-out evaluations are off (``eval_every`` 0): they are forward passes over held-out
examples, which the bill prices from the measured steps. Every stage runs in a child process
(``dpo_teach.frontier.dry_run_stages``), so its peak memory is its own; the parent polls the run directory for
the disk the stage writes. On a CPU the stages run in float32 (few CPUs have fast bfloat16 matrix units; this
project's CI machine multiplies bf16 matrices 200 times slower than fp32); on a CUDA device in the preset's
precision. A finished stage is kept: run the command again to redo only what is missing.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dpo_teach.footprint import available_memory_bytes, directory_bytes, wait_for_child
from dpo_teach.frontier.presets import TaskConfig
from dpo_teach.frontier.standins import CLASSIFIER_ARCHITECTURES, POLICY_ARCHITECTURES
from dpo_teach.machine import describe

CHILD_ENVIRONMENT = {"TOKENIZERS_PARALLELISM": "false", "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
"""Every stage's process: no tokenizer threads, and glibc's malloc giving every block above 128 KiB back to the system
when it is freed. By default glibc keeps freed blocks below a threshold that grows to 32 MiB, and most of gpt2-large's
tensors are smaller (a layer's weights are 6-26 MB): the dry run's SFT step of gpt2-large peaked at 18.6 GiB of RSS
with the default and at 12.6 GiB with this setting, the same step and FLOPs; the 6 GiB were freed activations that
the heap held, not memory the step needs."""

PPO_BYTES_PER_PARAMETER = {"adamw": 4 * 3 + 4 * 2 + 8 * 2, "rmsprop": 4 * 3 + 4 * 2 + 4 * 2}
"""PPO's fixed memory per policy parameter in float32: policy, value model and reference weights (4 bytes each), the
gradients of the first two (4 each) and their optimizer state (AdamW two moments, RMSprop one)."""
LOW_MEMORY_BYTES = 3 * 2**29
"""On a CPU, a stage is stopped when the machine's available memory falls below this (1.5 GiB), before the kernel's
out-of-memory killer picks a process, maybe another user's."""
PPO_MEMORY_SHARE = 0.6
"""PPO runs at full depth when that fixed memory plus a policy-sized reward model fits this share of the memory
available; the rest is for activations, the libraries and other work on the machine."""


@dataclass
class DryRunConfig:
    """What the dry run cuts; every other setting is the preset's."""

    steps: int = 1
    """Optimizer steps of SFT, the reward model and DPO; PPO steps (one rollout and its updates each)."""
    pair_prompts: int = 16
    """Prompts sampled for the pairs (4 samples and 6 pairs each): 16 give ~90 training pairs, above DPO's 64."""
    eval_prompts: int = 16
    """Held-out prompts of the evaluation stage."""
    sft_rows: int = 4
    """Reviews per SFT step (at most the preset's batch); one row of gpt2-large at 512 tokens is ~1 min here."""
    rows_per_micro_batch: int = 1
    """SFT reviews per micro-batch."""
    pairs_per_micro_batch: int = 8
    """Pairs per micro-batch of the reward model and DPO."""
    ppo_layers: tuple[int, ...] = ()
    """PPO's policy depths; empty: the policy's own if PPO fits (PPO_MEMORY_SHARE), else 1/9 and 2/9 of it."""
    beta: float = 0.1  # paper App. B
    """DPO's beta (the cost of a step does not depend on it)."""
    threads: int = 0
    """torch threads of every stage; 0 keeps torch's default (the machine's cores)."""
    stand_in_policy: dict = field(default_factory=dict)
    """Architecture of the policy stand-in; empty: the preset's model's (standins.POLICY_ARCHITECTURES). Tests
    give a smaller one to run the same code in seconds."""
    stand_in_classifier: dict = field(default_factory=dict)
    """Architecture of the reward classifier stand-in; empty: the preset's (standins.CLASSIFIER_ARCHITECTURES)."""


@dataclass
class Plan:
    """Everything a stage's process needs (pickled to it): the dry run's task config and where it runs."""

    preset: str
    config: TaskConfig
    run_dir: str
    device: str
    threads: int
    beta: float
    ppo_target_kl: float
    ppo_layers: list[int]
    policy_layers: int
    policy_parameters: int
    stand_ins: dict
    """Arguments of ``standins.build_stand_ins`` (empty for the tiny preset, which needs none)."""


def _policy_architecture(config: TaskConfig, dry: DryRunConfig) -> dict:
    if config.model:
        return dry.stand_in_policy or POLICY_ARCHITECTURES[config.model]
    shape = config.shape  # the tiny preset's GPT-2, trained from scratch
    return {"vocab_size": config.vocab_size, "n_positions": shape.n_positions, "n_embd": shape.n_embd,
            "n_layer": shape.n_layer, "n_head": shape.n_head}  # fmt: skip


def _parameters(architecture: dict) -> int:
    """Parameters of a GPT-2 of ``architecture`` (tied output embedding), counted on the meta device."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in GPT2LMHeadModel(GPT2Config(**architecture)).parameters())


def make_plan(config: TaskConfig, dry: DryRunConfig, run_dir: str | Path, device: str) -> Plan:
    """The preset ``config`` cut to the dry run's sizes (module docstring), its Hub names replaced by stand-ins."""
    config, run_dir = copy.deepcopy(config), Path(run_dir)
    precision = config.mixed_precision if device == "cuda" else "no"
    policy = _policy_architecture(config, dry)
    stand_ins = {}
    if config.model:
        stand_ins = {
            "policy": policy, "classifier": dry.stand_in_classifier or CLASSIFIER_ARCHITECTURES[config.reward],
            "num_train": max(dry.sft_rows, dry.pair_prompts, config.ppo.batch_size) + 16,
            "num_test": dry.eval_prompts + 16, "min_review_tokens": config.sft.max_length,
        }  # fmt: skip
        names = ("policy", "classifier", "imdb")
        config.model, config.reward, config.corpus = (str(run_dir / "stand-ins" / name) for name in names)
    config.num_pair_prompts, config.num_eval_prompts = dry.pair_prompts, dry.eval_prompts
    rows = min(config.sft.batch_size, dry.sft_rows)
    config.sft = dataclasses.replace(
        config.sft, max_steps=dry.steps, batch_size=rows, eval_every=0,
        gradient_accumulation_steps=rows // min(rows, dry.rows_per_micro_batch),
    )  # fmt: skip
    for name, extra in (("reward_model", {"keep_best": False}), ("dpo", {})):  # keep_best needs evaluations
        trainer = getattr(config, name)
        accumulation = trainer.batch_size // min(trainer.batch_size, dry.pairs_per_micro_batch)
        setattr(config, name, dataclasses.replace(
            trainer, max_steps=dry.steps, eval_every=0, gradient_accumulation_steps=accumulation, **extra
        ))  # fmt: skip
    config.ppo = dataclasses.replace(config.ppo, max_steps=dry.steps)
    for name in ("sft", "dpo", "preferred_ft", "unlikelihood", "reward_model", "ppo"):
        setattr(config, name, dataclasses.replace(getattr(config, name), mixed_precision=precision))
    parameters = _parameters(policy)
    layers = list(dry.ppo_layers)
    if not layers:
        fixed = (PPO_BYTES_PER_PARAMETER[config.ppo.optimizer] + 4) * parameters  # + the reward model's weights
        fits = fixed <= PPO_MEMORY_SHARE * available_memory_bytes(torch.device(device))
        depth, fraction = policy["n_layer"], max(1, policy["n_layer"] // 9)
        layers = [depth] if fits or depth < 4 else [fraction, 2 * fraction]
    return Plan(
        config.preset, config, str(run_dir), device, dry.threads, dry.beta, config.ppo_target_kls[0], layers,
        policy["n_layer"], parameters, stand_ins,
    )  # fmt: skip


def stage_names(plan: Plan) -> list[tuple[str, int | None]]:
    """(stage, PPO depth) in the order they run."""
    names = [("stand-ins", None)] if plan.stand_ins else []
    names += [("sft", None), ("pairs", None), ("reward-model", None), ("dpo", None)]
    return names + [("ppo", layers) for layers in plan.ppo_layers] + [("evaluation", None)]


def _label(stage: str, layers: int | None) -> str:
    return stage if layers is None else f"ppo-{layers}-layers"


OUTPUTS = {"sft": ["sft"], "pairs": ["pairs"], "reward-model": ["reward-model"],
           "dpo": ["dry-run-dpo", "reference-cache"]}  # fmt: skip
"""Directories of the run that a stage writes, removed before it is measured again (else the task would reuse them)."""


def _run_child(stage: str, layers: int | None, plan_path: Path, run_dir: Path, work: Path, device: str) -> dict:
    """Run one stage in a fresh interpreter, polling the run directory's size; returns its measurements."""
    label = _label(stage, layers)
    for name in OUTPUTS.get(stage, [f"dry-run-ppo-{layers}-layers"] if stage == "ppo" else []):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    result_path, log_path = work / f"{label}.measured.json", work / f"{label}.log"
    command = [sys.executable, "-m", "dpo_teach.frontier.dry_run_stages", stage, str(plan_path), str(result_path)]
    command += [str(layers)] if layers is not None else []
    before = directory_bytes(run_dir)
    started = time.perf_counter()
    disk, low_memory = [before], []

    def while_running() -> None:
        disk.append(directory_bytes(run_dir))
        if device == "cpu" and available_memory_bytes(torch.device("cpu")) < LOW_MEMORY_BYTES and not low_memory:
            low_memory.append(True)
            child.kill()

    with log_path.open("w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | CHILD_ENVIRONMENT)
        status, peak_rss = wait_for_child(child, while_running, interval=0.2)
    if low_memory:
        raise MemoryError(f"dry run stage {label} stopped: the machine had less than "
                          f"{LOW_MEMORY_BYTES / 2**30:.1f} GiB of memory left, the stage's own peak being "
                          f"{peak_rss / 2**30:.1f} GiB (log: {log_path})")  # fmt: skip
    if status:
        raise RuntimeError(f"dry run stage {label} failed (status {status}); end of {log_path}:\n"
                           + log_path.read_text()[-3000:])  # fmt: skip
    after = directory_bytes(run_dir)
    result = json.loads(result_path.read_text())
    if device == "cpu":  # the kernel's count at the child's exit (footprint.wait_for_child)
        result |= {"peak_memory_bytes": peak_rss, "peak_memory_bytes_in_process": result["peak_memory_bytes"]}
    result |= {"process_seconds": time.perf_counter() - started, "disk_peak_bytes": max(*disk, after) - before,
               "disk_kept_bytes": after - before}  # fmt: skip
    return result


def run_dry_run(config: TaskConfig, out: str | Path, dry: DryRunConfig | None = None, log=print) -> dict:
    """Measure every stage of ``config`` (module docstring) in ``out``; returns the report that
    ``dpo_teach.frontier.bill`` prices and prints, also written to ``out/dry_run.json``."""
    from dpo_teach.frontier.bill import gpu_bill, ppo_at_full_depth

    dry = dry or DryRunConfig()
    run_dir = Path(out)
    work = run_dir / "dry-run"
    work.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = make_plan(config, dry, run_dir, device)
    plan_path = work / "plan.pkl"
    plan_path.write_bytes(pickle.dumps(plan))
    key = hashlib.sha256(repr(dataclasses.asdict(plan)).encode()).hexdigest()
    started, stages, redo = time.perf_counter(), {}, False
    names = stage_names(plan)
    log(f"dry run of the {plan.preset} preset on {device} ({'float32' if device == 'cpu' else 'preset precision'}), "
        f"{len(names)} stages, each in its own process; logs in {work}")  # fmt: skip
    for index, (stage, layers) in enumerate(names, start=1):
        label, saved = _label(stage, layers), work / f"{_label(stage, layers)}.json"
        cached = json.loads(saved.read_text()) if saved.exists() else None
        if not redo and cached is not None and cached.get("key") == key:
            stages[label] = cached
            log(f"[{index}/{len(names)}] {label}: measured before, kept ({saved})")
            continue
        redo = True
        log(f"[{index}/{len(names)}] {label}: running ({time.perf_counter() - started:.0f} s so far)")
        stages[label] = _run_child(stage, layers, plan_path, run_dir, work, device) | {"key": key}
        saved.write_text(json.dumps(stages[label], indent=2))
        result = stages[label]
        log(
            f"    {result['seconds']:.0f} s, peak {result['peak_memory_bytes'] / 2**30:.1f} GiB, "
            f"{result['flops'] / 1e12:.2f} TFLOP counted, disk {result['disk_peak_bytes'] / 2**30:.2f} GiB"
        )
    stages["ppo"] = ppo_at_full_depth(plan, stages)
    report = {
        "preset": plan.preset, "device": device, "machine": describe(torch.get_num_threads()),
        "plan": _plan_summary(plan), "stages": stages, "seconds_this_invocation": time.perf_counter() - started,
    }  # fmt: skip
    report["bill"] = gpu_bill(config, report)
    (run_dir / "dry_run.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _plan_summary(plan: Plan) -> dict:
    config = plan.config
    return {
        "precision": config.mixed_precision, "threads": plan.threads or torch.get_num_threads(),
        "sft": {"rows": config.sft.batch_size, "micro_batches": config.sft.gradient_accumulation_steps,
                "max_length": config.sft.max_length, "steps": config.sft.max_steps},
        "reward_model": {"pairs": config.reward_model.batch_size,
                         "micro_batches": config.reward_model.gradient_accumulation_steps},
        "dpo": {"pairs": config.dpo.batch_size, "micro_batches": config.dpo.gradient_accumulation_steps},
        "ppo": {"rollouts": config.ppo.batch_size, "epochs": config.ppo.ppo_epochs,
                "minibatches": config.ppo.num_minibatches, "layers": plan.ppo_layers, "steps": config.ppo.max_steps},
        "pair_prompts": config.num_pair_prompts, "eval_prompts": config.num_eval_prompts,
        "samples_per_prompt": config.samples_per_prompt, "max_new_tokens": config.sampling.max_new_tokens,
        "policy_layers": plan.policy_layers, "policy_parameters": plan.policy_parameters,
        "stand_ins": bool(plan.stand_ins),
    }  # fmt: skip
