"""``dpo-teach gpu-check`` (``make gpu-check``): what one CUDA GPU does with the paper preset, measured.

Ready for the day a GPU is there; on a machine without one it says so and measures nothing. On a GPU
(``--size paper``, the default, in about 5 minutes on an A100 by our arithmetic, not yet timed on one):

1. **bench**: ``dpo_teach.bench`` (this trainer with an online and a precomputed reference, a bare PyTorch
   step, TRL when installed) at gpt2-large's shape and vocabulary, in bf16 autocast;
2. **DPO**: 50 steps of the ``paper`` preset's DPO (batch 64, RMSprop, lr 1e-6, bf16, precomputed reference)
   on the random-weight gpt2-large stand-in of the dry run (``dpo_teach.frontier.standins``), on pairs of the
   paper's lengths (2-8 token prompts of the stand-in reviews, 48-token completions), in micro-batches of 16
   pairs. Steps 1-2 warm up, the FLOPs of step 3 are counted (``footprint.StepFlops``, which slows the step it
   counts), steps 4-50 are timed. MFU = counted FLOPs per token x measured tokens per second / the GPU's bf16 peak
   (``dpo_teach.gpus``; unknown GPUs get no MFU);
3. **sampling**: one batch of the preset's pair sampling (64 sequences of 48 new tokens, float32 weights as the
   task loads them): ms per token step, next to the weight-read floor of ``dpo_teach.gpus``.

Everything goes to ``OUT/gpu_check.json``, whose ``metrics`` is a flat dict a script can compare between
machines. ``--size tiny --device cpu`` runs the same code on a CPU at toy sizes (the tests do): the bench in bf16
as on a GPU (a CPU without bf16 units emulates it, slowly, which a toy model affords), DPO in float32.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dpo_teach import bench, gpus
from dpo_teach.footprint import StepFlops, peak_memory_bytes
from dpo_teach.frontier.presets import preset
from dpo_teach.frontier.standins import CLASSIFIER_ARCHITECTURES, POLICY_ARCHITECTURES, build_stand_ins
from dpo_teach.machine import describe
from dpo_teach.sampling import SamplingConfig, sample
from dpo_teach.sentiment.corpus import imdb_corpus
from dpo_teach.sentiment.prompts import make_prompts
from dpo_teach.train.dpo import train_dpo
from dpo_teach.train.models import load_causal_lm, load_tokenizer


@dataclass
class CheckSize:
    """The sizes of one check."""

    policy: dict
    """Architecture of the policy stand-in."""
    dpo_steps: int
    """DPO steps of the paper preset (the first ``warmup`` and the counted one are not timed)."""
    warmup: int
    dpo_batch_size: int
    pairs_per_micro_batch: int
    num_pairs: int
    bench: dict
    """Overrides of ``bench.BenchConfig``."""


_TINY_POLICY = {"vocab_size": 1024, "n_positions": 1024, "n_embd": 32, "n_layer": 2, "n_head": 2}
SIZES = {
    "paper": CheckSize(
        POLICY_ARCHITECTURES["gpt2-large"], dpo_steps=50, warmup=3, dpo_batch_size=64, pairs_per_micro_batch=16,
        num_pairs=512, bench={"n_layer": 36, "n_embd": 1280, "n_head": 20, "model_vocab_size": 50257,
                              "mixed_precision": "bf16", "rounds": 1, "threads": 1},
    ),
    "tiny": CheckSize(
        _TINY_POLICY, dpo_steps=4, warmup=1, dpo_batch_size=8, pairs_per_micro_batch=4, num_pairs=32,
        bench=bench.QUICK | {"mixed_precision": "bf16", "model_vocab_size": 1024},  # bf16 as on a GPU: a tiny model
    ),
}  # fmt: skip
COMPLETION_TOKENS = 48  # the paper preset's sampling.max_new_tokens


def paper_shaped_pairs(tokenizer, reviews: list[str], num_pairs: int) -> list[dict]:
    """Pairs of the paper's lengths from ``reviews``: the first 2-8 tokens of a review as the prompt, its next 48
    tokens and the 48 after them as chosen and rejected (which is which does not matter to a step's cost)."""
    pairs = []
    for index in range(num_pairs):
        ids = tokenizer(reviews[index % len(reviews)], add_special_tokens=False)["input_ids"]
        prompt_tokens = 2 + index % 7  # paper Sec. 6.1: prefixes of 2-8 tokens
        prompt, chosen, rejected = (
            tokenizer.decode(ids[start:end])
            for start, end in ((0, prompt_tokens), (prompt_tokens, prompt_tokens + COMPLETION_TOKENS),
                               (prompt_tokens + COMPLETION_TOKENS, prompt_tokens + 2 * COMPLETION_TOKENS))
        )  # fmt: skip
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def dpo_steps(size: CheckSize, policy_dir: str, reviews: list[str], output_dir: Path, device: torch.device) -> dict:
    """The paper preset's DPO for ``size.dpo_steps`` steps; ms/step, tokens/s, counted FLOPs, MFU, peak memory."""
    tokenizer = load_tokenizer(policy_dir)
    precision = "bf16" if device.type == "cuda" else "no"  # CPUs without bf16 units would measure emulation
    config = replace(
        preset("paper").dpo, output_dir=str(output_dir), max_steps=size.dpo_steps, batch_size=size.dpo_batch_size,
        gradient_accumulation_steps=size.dpo_batch_size // size.pairs_per_micro_batch, eval_every=0, save_every=0,
        progress_bar=False, resume=False, mixed_precision=precision, delete_checkpoints_at_end=True,
    )  # fmt: skip
    counted = StepFlops(step=size.warmup)
    pairs = paper_shaped_pairs(tokenizer, reviews, size.num_pairs)
    train_dpo(config, load_causal_lm(policy_dir), tokenizer, pairs, callbacks=[counted])
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in records if "step_seconds" in record]
    tokens = [record["tokens_per_second"] * record["step_seconds"] for record in steps]
    counted_tokens = tokens[size.warmup - 1]
    timed = list(range(size.warmup, len(steps)))  # after the warm-up and the counted step
    seconds = [steps[index]["step_seconds"] for index in timed]
    flops_per_token = counted.flops / counted_tokens
    achieved = flops_per_token * sum(tokens[index] for index in timed) / sum(seconds)  # FLOP/s
    gpu = gpus.find_gpu(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    return {
        "steps": len(steps), "timed_steps": len(timed), "precision": precision,
        "batch_pairs": config.batch_size, "micro_batches": config.gradient_accumulation_steps,
        "ms_per_step": 1000 * statistics.median(seconds),
        "tokens_per_second": sum(tokens[index] for index in timed) / sum(seconds),
        "flops_per_step": counted.flops, "flops_per_token": flops_per_token, "achieved_flops": achieved,
        "mfu": achieved / gpu.bf16_flops if gpu else None, "gpu_datasheet": gpu.name if gpu else None,
        "peak_memory_bytes": peak_memory_bytes(device), "first_loss": steps[0].get("loss"),
    }  # fmt: skip


def sampling(policy_dir: str, reviews: list[str], device: torch.device, parameters: int) -> dict:
    """One batch of the paper preset's pair sampling: 16 prompts x 4 samples x 48 new tokens, float32 weights."""
    tokenizer, policy = load_tokenizer(policy_dir), load_causal_lm(policy_dir).to(device)
    prompts = make_prompts(reviews, tokenizer)[:16]
    config = SamplingConfig(max_new_tokens=COMPLETION_TOKENS, batch_size=64)
    sample(policy, tokenizer, prompts[:1], replace(config, max_new_tokens=2), progress_bar=False)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    sample(policy, tokenizer, prompts, config, num_samples_per_prompt=4, progress_bar=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    gpu = gpus.find_gpu(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    floor = gpus.sampling_floor_seconds(4 * parameters, COMPLETION_TOKENS, gpu) if gpu else None
    floor_ms = None if floor is None else 1000 * floor / COMPLETION_TOKENS
    return {
        "sequences": 64,
        "new_tokens": COMPLETION_TOKENS,
        "seconds": seconds,
        "ms_per_token_step": 1000 * seconds / COMPLETION_TOKENS,
        "weight_read_floor_ms_per_token_step": floor_ms,
    }


def run_gpu_check(size_name: str, device_name: str, out: Path | None, log=print) -> dict | None:
    """Run the check (module docstring); None, having said so, when ``device_name`` is 'cuda' and there is none."""
    if device_name == "cuda" and not torch.cuda.is_available():
        log("gpu-check: no CUDA GPU on this machine; nothing was measured. (dpo-teach frontier --preset paper "
            "--dry-run measures every stage on a CPU and extrapolates the GPU hours.)")  # fmt: skip
        return None
    if device_name == "cpu" and torch.cuda.is_available():
        raise ValueError("--device cpu: this machine has a CUDA GPU, which the trainers would use; run --device cuda")
    size, device = SIZES[size_name], torch.device(device_name)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo-teach-gpu-check-") as temporary:
        workspace = Path(temporary)
        log(f"gpu-check ({size_name} size) on {describe(torch.get_num_threads())['device']}: building the stand-ins")
        classifier = CLASSIFIER_ARCHITECTURES["siebert/sentiment-roberta-large-english"] | (
            {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
            if size_name == "tiny" else {}
        )  # fmt: skip
        stand_ins = build_stand_ins(workspace / "stand-ins", size.policy, classifier, 64, 8, COMPLETION_TOKENS * 3)
        reviews = [review.text for review in imdb_corpus(stand_ins.corpus)["train"]]
        log("bench: this trainer vs a bare PyTorch step (vs TRL when installed)")
        bench_summary = bench.run_bench(bench.BenchConfig(**size.bench))
        log(bench.format_report(bench_summary))
        log(f"DPO: {size.dpo_steps} steps of the paper preset")
        dpo = dpo_steps(size, stand_ins.model, reviews, workspace / "dpo", device)
        parameters = sum(p.numel() for p in load_causal_lm(stand_ins.model).parameters())
        sampled = sampling(stand_ins.model, reviews, device, parameters)
    report = {
        "size": size_name, "machine": describe(torch.get_num_threads()), "policy": size.policy,
        "policy_parameters": parameters, "bench": bench_summary, "dpo": dpo, "sampling": sampled,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    report["metrics"] = {
        "dpo_ms_per_step": dpo["ms_per_step"], "dpo_tokens_per_second": dpo["tokens_per_second"],
        "dpo_mfu": dpo["mfu"], "dpo_peak_memory_gib": dpo["peak_memory_bytes"] / 2**30,
        "sampling_ms_per_token_step": sampled["ms_per_token_step"],
        **{f"bench_{name}_ms_per_step": variant["median_ms"] for name, variant in bench_summary["variants"].items()},
    }  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def format_report(report: dict) -> str:
    """The check's numbers, as the command prints them."""
    dpo, sampled, metrics = report["dpo"], report["sampling"], report["metrics"]
    mfu = (
        "n/a (no datasheet peak for this device)"
        if dpo["mfu"] is None
        else f"{dpo['mfu']:.1%} of {dpo['gpu_datasheet']}"
    )
    floor = sampled["weight_read_floor_ms_per_token_step"]
    return "\n".join([
        f"gpu-check ({report['size']} size) on {report['machine']['device']}, {report['seconds']:.0f} s",
        f"DPO, paper preset: {dpo['batch_pairs']} pairs per step in {dpo['micro_batches']} micro-batches, "
        f"{dpo['precision']}; median {dpo['ms_per_step']:.0f} ms/step over {dpo['timed_steps']} steps, "
        f"{dpo['tokens_per_second']:,.0f} tokens/s, {dpo['flops_per_step'] / 1e12:.2f} TFLOP per step (counted), "
        f"MFU {mfu}, peak memory {metrics['dpo_peak_memory_gib']:.1f} GiB",
        f"sampling: 64 sequences x {sampled['new_tokens']} tokens in {sampled['seconds']:.2f} s, "
        f"{sampled['ms_per_token_step']:.1f} ms per token step"
        + ("" if floor is None else f" (weight-read floor {floor:.2f} ms)"),
    ])  # fmt: skip
