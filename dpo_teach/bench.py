"""``dpo-teach bench``: milliseconds per DPO step of this trainer, next to a bare PyTorch step and TRL.

A tiny GPT-2 (4 layers, 256 wide, a byte-level BPE tokenizer trained here on seeded synthetic
reviews) is saved once; every variant loads those weights and trains, in fp32 (or under bf16 autocast:
``mixed_precision``, as ``dpo-teach gpu-check`` runs it at gpt2-large's shape) with AdamW, on the
same batches in the same order (``dpo_teach.train.loop.micro_batch_indices``):

- ``online``: ``train_dpo`` with a frozen reference copy next to the policy;
- ``precomputed``: ``train_dpo`` with the reference log-probs computed before the first step;
- ``bare``: plain PyTorch: one concatenated policy forward, a no-grad reference forward,
  ``log_softmax().gather`` log-probs, the DPO loss inline, backward, clip, optimizer step;
- ``trl``: TRL's ``DPOTrainer`` (online reference), only when ``trl`` is installed
  (``pip install 'dpo-teach[bench]'``; never a runtime dependency).

A step's time covers collation, forward, backward, optimizer and metrics: ``step_seconds`` of
``metrics.jsonl`` for ours, ``perf_counter`` around the same work for bare, and the interval between
TRL's consecutive ``on_step_end`` callbacks (which also covers its data loading and logging). Each
variant runs in its own process (``python -m dpo_teach.bench``), so its peak memory is its own;
rounds rotate the variants' order. The first ``warmup`` steps of each process are dropped and
medians are taken over all rounds. Targets: online <= 1.05x bare; precomputed < bare; TRL's
ms/step >= 1.5x ours (online, like TRL). The first step of every variant is reported too: equal
losses, gradient norms and log-probs show that they train the same model on the same batch.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import operator
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from dpo_teach.data import IGNORE_INDEX, collate_preference, load_examples, tokenize_preference
from dpo_teach.machine import describe
from dpo_teach.sentiment.models import train_tokenizer
from dpo_teach.train.config import DPOConfig
from dpo_teach.train.loop import micro_batch_indices

VARIANTS = {
    "online": "dpo-teach, online reference",
    "precomputed": "dpo-teach, precomputed reference",
    "bare": "bare PyTorch step",
    "trl": "TRL DPOTrainer",
}
RATIOS = (("online", "bare"), ("precomputed", "bare"), ("trl", "online"), ("trl", "precomputed"))
"""Ratios of median ms/step reported; ``trl/online`` is our throughput gain over TRL (both use an online reference)."""
TARGETS = {"online/bare": "<= 1.05", "precomputed/bare": "< 1", "trl/online": ">= 1.5"}
COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge}
NOISY = 1.25
"""A variant whose slowest round median exceeds its fastest by this factor is flagged: the machine was busy."""
MAX_GRAD_NORM = 10.0  # the DPO authors' code, as DPOConfig


@dataclass
class BenchConfig:
    """Sizes of the bench; every variant reads the same one (``config.json`` of the workspace)."""

    steps: int = 20
    """Measured optimizer steps per variant and round, after the warm-up."""
    warmup: int = 3
    """Steps dropped at the start of every process (allocator, caches, lazy initialization)."""
    batch_size: int = 8
    """Preference pairs per optimizer step (one micro-batch)."""
    threads: int = 1
    """torch CPU threads of every variant. One by default: on a small shared VM two threads stalled for seconds."""
    rounds: int = 3
    """Rounds of all variants, the order rotated by one each round."""
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 4
    vocab_size: int = 4096
    """Vocabulary the BPE tokenizer is trained to; the model's is the size it reaches (or ``model_vocab_size``)."""
    model_vocab_size: int = 0
    """Rows of the model's embedding; 0: the tokenizer's size. GPT-2's 50,257 gives its real LM head."""
    mixed_precision: str = "no"
    """'no' (fp32) or 'bf16': autocast in every variant (ours through accelerate, bare through torch.autocast, TRL's
    bf16 flag); the weights and the optimizer stay fp32."""
    num_pairs: int = 256
    max_length: int = 128
    """Longest prompt + completion in tokens; the synthetic pairs stay below it, so nothing is truncated."""
    max_prompt_length: int = 64
    learning_rate: float = 1e-5
    beta: float = 0.1  # DPO paper App. B
    seed: int = 0


QUICK = {"steps": 3, "warmup": 1, "batch_size": 4, "rounds": 1, "n_layer": 1, "n_embd": 32, "n_head": 2}
QUICK |= {"vocab_size": 512, "num_pairs": 32}
"""``--quick``: sizes for a smoke test of a few seconds per variant."""

SYLLABLES = "ka lo mi ren sa to vel dor an is bre qu zel mon ta ri el os ga nu fer lin cor pa".split()
WORDS = {
    "good": "wonderful moving sharp gripping tender brilliant funny beautiful honest".split(),
    "bad": "dull clumsy tedious flat confused lifeless predictable shallow loud".split(),
    "role": "detective mother king soldier teacher thief".split(),
}
PARTS = ["plot", "script", "score", "ending", "pacing", "dialogue", "camera work", "second act", "cast"]
POSITIVE = [
    "{actor} gives a {good} performance as the {role}.",
    "The {part} is {good}, and the {part2} is even better.",
    "I was moved by the final scene, which felt {good} and earned.",
    "A {good} film that I will gladly watch again with {name}.",
    "Every minute of the {part} kept me {good}ly engaged.",
]
NEGATIVE = [
    "{actor} looks bored as the {role}, and the {part} is {bad}.",
    "The {part} is {bad}, and the {part2} is even worse.",
    "I checked my watch twice during the {part}, which felt {bad}.",
    "A {bad} film that wastes {actor} and everyone around them.",
    "Nothing in the {part} surprised me; it is {bad} from start to end.",
]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _review(rng: random.Random, templates: list[str]) -> str:
    """Two to five sentences (20-70 tokens), each after a space: the review continues the prompt."""
    sentences = []
    for template in rng.sample(templates, rng.randint(2, 5)):
        part, part2 = rng.sample(PARTS, 2)
        fields = {key: rng.choice(words) for key, words in WORDS.items()} | {"part": part, "part2": part2}
        sentences.append(" " + template.format(name=_name(rng), actor=f"{_name(rng)} {_name(rng)}", **fields))
    return "".join(sentences)


def synthetic_pairs(num_pairs: int, seed: int) -> list[dict]:
    """Seeded review pairs: ``prompt`` a title line, ``chosen`` a positive review, ``rejected`` a negative one."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(num_pairs):
        prompt = f"Review of {_name(rng)} {_name(rng)} ({rng.randint(1950, 2024)}), directed by {_name(rng)}:"
        pairs.append({"prompt": prompt, "chosen": _review(rng, POSITIVE), "rejected": _review(rng, NEGATIVE)})
    return pairs


def build_workspace(config: BenchConfig, workspace: Path) -> dict:
    """Save a BPE tokenizer, a seeded GPT-2, the pairs and the config to ``workspace``; returns the model's sizes."""
    from transformers.utils import logging

    pairs = synthetic_pairs(config.num_pairs, config.seed)
    corpus = synthetic_pairs(16 * config.num_pairs, config.seed + 1) + pairs  # enough words to reach the vocabulary
    texts = (pair["prompt"] + pair[key] for pair in corpus for key in ("chosen", "rejected"))
    tokenizer = train_tokenizer(texts, config.vocab_size)
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=max(len(tokenizer), config.model_vocab_size), n_positions=config.max_length, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # saving a model draws one
    model.save_pretrained(workspace / "model")
    tokenizer.save_pretrained(workspace / "model")
    if bars:
        logging.enable_progress_bar()
    (workspace / "pairs.json").write_text(json.dumps(pairs))
    (workspace / "config.json").write_text(json.dumps(asdict(config)))
    return {
        "vocab_size": model.config.vocab_size,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def _dpo_config(config: BenchConfig, output_dir: Path, precompute_ref: bool) -> DPOConfig:
    """Our trainer's config; the bare step and TRL take their data order and hyper-parameters from it too."""
    return DPOConfig(
        output_dir=str(output_dir), max_steps=config.warmup + config.steps, batch_size=config.batch_size,
        learning_rate=config.learning_rate, optimizer="adamw", warmup_steps=0, max_grad_norm=MAX_GRAD_NORM,
        max_length=config.max_length, max_prompt_length=config.max_prompt_length, beta=config.beta,
        seed=config.seed, eval_every=0, save_every=0, precompute_ref=precompute_ref, progress_bar=False, resume=False,
        mixed_precision=config.mixed_precision,
    )  # fmt: skip


def _step_order(config: DPOConfig, num_examples: int) -> list[list[int]]:
    """Example indices of every optimizer step, as the trainer draws them (one process, one micro-batch)."""
    return [micro_batch_indices(num_examples, config, step, 1, 0)[0] for step in range(config.max_steps)]


def _load(workspace: Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerBase, list[dict]]:
    """The saved model, its tokenizer and the pairs: what every variant starts from."""
    model_dir = workspace / "model"
    pairs = json.loads((workspace / "pairs.json").read_text())
    return GPT2LMHeadModel.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir), pairs


def _first_step(record: dict) -> dict:
    return {key: float(record[key]) for key in ("loss", "grad_norm", "logps/chosen")}


def run_ours(config: BenchConfig, workspace: Path, output_dir: Path, precompute_ref: bool) -> dict:
    """``train_dpo`` on the workspace; step times are ``step_seconds`` of its ``metrics.jsonl``."""
    from dpo_teach.train.dpo import train_dpo

    train_dpo(_dpo_config(config, output_dir, precompute_ref), *_load(workspace))
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    records = [record for record in records if "loss" in record]
    return {"step_seconds": [record["step_seconds"] for record in records], "first_step": _first_step(records[0])}


def _naive_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed completion log-probs ``(N,)`` from logits ``(N, T, V)``: a full log-softmax, then gather."""
    targets = labels[:, 1:]  # (N, T-1): position t predicts token t + 1
    token_logps = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)  # (N, T-1)
    return (token_logps * (targets != IGNORE_INDEX)).sum(-1)


def run_bare(config: BenchConfig, workspace: Path, output_dir: Path) -> dict:
    """A DPO step in plain PyTorch on the same weights and batches; ``perf_counter`` around the whole step."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy, tokenizer, pairs = _load(workspace)
    pairs, _ = load_examples(pairs)  # validated as train_dpo does
    examples = [tokenize_preference(pair, tokenizer, config.max_length, config.max_prompt_length) for pair in pairs]
    policy = policy.to(device)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.learning_rate, weight_decay=0.0)
    bf16 = config.mixed_precision == "bf16"
    step_seconds, records = [], []
    for indices in _step_order(_dpo_config(config, output_dir, precompute_ref=False), len(examples)):
        started = time.perf_counter()
        policy.train()
        batch = collate_preference([examples[i] for i in indices], tokenizer.pad_token_id)
        input_ids, attention_mask, labels = (batch[key].to(device) for key in ("input_ids", "attention_mask", "labels"))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # log-probs in fp32, as ours
            policy_logits = policy(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (2B, T, V)
            with torch.no_grad():
                reference_logits = reference(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        policy_logps, ref_logps = _naive_logps(policy_logits, labels), _naive_logps(reference_logits, labels)  # (2B,)
        policy_chosen_logps, policy_rejected_logps = policy_logps.chunk(2)  # (B,) each
        ref_chosen_logps, ref_rejected_logps = ref_logps.chunk(2)
        # DPO Eq. 7: -log sigma(beta * [log pi(y_w|x)/pi_ref(y_w|x) - log pi(y_l|x)/pi_ref(y_l|x)])
        logits = config.beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
        loss = -F.logsigmoid(logits).mean()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        records.append({"loss": loss.item(), "grad_norm": grad_norm.item()})
        records[-1]["logps/chosen"] = policy_chosen_logps.mean().item()
        step_seconds.append(time.perf_counter() - started)
    return {"step_seconds": step_seconds, "first_step": _first_step(records[0])}


def run_trl(config: BenchConfig, workspace: Path, output_dir: Path) -> dict:
    """TRL's ``DPOTrainer``: same weights, hyper-parameters and batches (a sequential sampler over our order)."""
    import datasets
    import trl
    from transformers import PrinterCallback, TrainerCallback

    class StepClock(TrainerCallback):
        """The time of the first step's begin and of every step's end, and every logged record."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.logs: list[dict] = []

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            self.times = self.times or [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs) -> None:
            self.logs.append(dict(logs or {}))

    dpo_config = _dpo_config(config, output_dir, precompute_ref=False)
    model, tokenizer, pairs = _load(workspace)
    ordered = datasets.Dataset.from_list([pairs[i] for indices in _step_order(dpo_config, len(pairs)) for i in indices])
    args = trl.DPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=config.batch_size, max_steps=dpo_config.max_steps,
        learning_rate=config.learning_rate, lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM, beta=config.beta, max_length=config.max_length,
        bf16=config.mixed_precision == "bf16", fp16=False,
        gradient_checkpointing=False, use_cpu=not torch.cuda.is_available(), train_sampling_strategy="sequential",
        save_strategy="no", eval_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, seed=config.seed,
    )  # fmt: skip
    clock = StepClock()
    trainer = trl.DPOTrainer(model, args=args, train_dataset=ordered, processing_class=tokenizer, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # logging every step, as ours, but not printing it
    trainer.train()
    step_seconds = [end - begin for begin, end in zip(clock.times, clock.times[1:], strict=False)]
    return {"step_seconds": step_seconds, "first_step": _first_step(clock.logs[0])}


def _peak_memory_mib() -> float:
    """Peak memory of this process: CUDA's max allocated on a GPU, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def run_variant(variant: str, workspace: Path, output_dir: Path) -> dict:
    """One variant in this process: step times, first step, peak memory, and memory after the imports."""
    config = BenchConfig(**json.loads((workspace / "config.json").read_text()))
    torch.set_num_threads(config.threads)
    if variant == "trl":
        import trl  # noqa: F401  (before the baseline, as the other variants' libraries)
    imports_mib = _peak_memory_mib()
    if variant in ("online", "precomputed"):
        result = run_ours(config, workspace, output_dir, precompute_ref=variant == "precomputed")
    else:
        result = {"bare": run_bare, "trl": run_trl}[variant](config, workspace, output_dir)
    return result | {"peak_mib": _peak_memory_mib(), "imports_mib": imports_mib, "threads": torch.get_num_threads()}


def _spawn(variant: str, workspace: Path, round_index: int) -> dict:
    """``run_variant`` in a fresh interpreter; a failure raises with the end of its stderr."""
    output_dir = workspace / "runs" / f"{variant}-{round_index}"
    result_path = output_dir.with_suffix(".json")
    command = [sys.executable, "-m", "dpo_teach.bench", variant, str(workspace), str(output_dir), str(result_path)]
    finished = subprocess.run(
        command, capture_output=True, text=True, env=os.environ | {"TOKENIZERS_PARALLELISM": "false"}
    )
    if finished.returncode:
        raise RuntimeError(
            f"bench variant {variant!r} failed (status {finished.returncode}):\n{finished.stderr[-3000:]}"
        )
    return json.loads(result_path.read_text())


def summarize(config: BenchConfig, runs: dict[str, list[dict]]) -> dict:
    """Per variant: median ms/step over every round's measured steps, peak memory; ratios of medians; targets."""
    variants = {}
    for name, results in runs.items():
        measured = [seconds for result in results for seconds in result["step_seconds"][config.warmup :]]
        variants[name] = {
            "median_ms": 1000 * statistics.median(measured),
            "round_medians_ms": [
                1000 * statistics.median(result["step_seconds"][config.warmup :]) for result in results
            ],
            "steps": len(measured),
            "peak_mib": max(result["peak_mib"] for result in results),
            "above_imports_mib": max(result["peak_mib"] - result["imports_mib"] for result in results),
            "threads": sorted({result["threads"] for result in results}),
            "first_step": results[0]["first_step"],
            "step_ms": [[1000 * seconds for seconds in result["step_seconds"]] for result in results],
        }
    median = {name: variant["median_ms"] for name, variant in variants.items()}
    ratios = {f"{name}/{base}": median[name] / median[base] for name, base in RATIOS if {name, base} <= median.keys()}
    targets_met = {}
    for ratio, target in TARGETS.items():
        if ratio in ratios:
            comparison, bound = target.split()
            targets_met[ratio] = COMPARE[comparison](ratios[ratio], float(bound))
    summary = {"machine": describe(config.threads), "config": asdict(config), "variants": variants, "ratios": ratios}
    return summary | {"targets_met": targets_met}


def run_bench(config: BenchConfig, out: Path | None = None) -> dict:
    """Build the workspace, run every variant ``config.rounds`` times in rotated order and summarize.

    TRL runs only when it is installed. With ``out``, the summary (every step's time included) is
    written to ``out/bench.json``.
    """
    names = [name for name in VARIANTS if name != "trl" or importlib.util.find_spec("trl") is not None]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="dpo-teach-bench-") as temporary:
        model = build_workspace(config, Path(temporary))
        for round_index in range(config.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                runs[name].append(_spawn(name, Path(temporary), round_index))
    summary = summarize(config, runs) | {"model": model}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_report(summary: dict) -> str:
    """The machine, the table, the first-step check and the targets, as ``dpo-teach bench`` prints them."""
    config, machine, variants, model = summary["config"], summary["machine"], summary["variants"], summary["model"]
    versions = ", ".join(f"{name} {number}" for name, number in machine["versions"].items())
    precision = "bf16 autocast" if config.get("mixed_precision") == "bf16" else "fp32"
    lines = [
        f"dpo-teach bench: GPT-2 {config['n_layer']} layers x {config['n_embd']} wide, vocabulary "
        f"{model['vocab_size']}, {model['parameters'] / 1e6:.2f}M parameters; {config['batch_size']} pairs per step, "
        f"{precision}, AdamW",
        f"machine: {machine['cpu']} ({machine['cpu_capability']}), {machine['cores']} cores, "
        f"{machine['torch_threads']} torch thread(s), "
        f"device {machine['device']}; {versions}",
        f"each variant in its own process, {config['rounds']} round(s) in rotated order, {config['warmup']} warm-up "
        f"+ {config['steps']} measured steps per process; medians over all rounds",
        "",
        f"{'variant':34}{'ms/step':>9}{'steps':>7}{'peak MiB':>10}{'above imports':>15}{'vs bare':>9}",
    ]
    for name, variant in variants.items():
        ratio = variant["median_ms"] / variants["bare"]["median_ms"]
        lines.append(
            f"{VARIANTS[name]:34}{variant['median_ms']:9.1f}{variant['steps']:7d}{variant['peak_mib']:10.0f}"
            f"{variant['above_imports_mib']:15.0f}{ratio:8.2f}x"
        )
    if "trl" not in variants:
        lines.append(f"{VARIANTS['trl']:34} not installed: pip install 'dpo-teach[bench]'")
    for name, variant in variants.items():
        low, high = min(variant["round_medians_ms"]), max(variant["round_medians_ms"])
        if high > NOISY * low:
            lines.append(f"  noisy machine: the round medians of {name} range from {low:.0f} to {high:.0f} ms; rerun")
    lines += ["", "first step of each variant (same weights, same batch):"]
    for name, variant in variants.items():
        step = variant["first_step"]
        lines.append(
            f"  {name:12} loss {step['loss']:.6f}  grad norm {step['grad_norm']:.6f}  "
            f"logps/chosen {step['logps/chosen']:.4f}"
        )
    lines += ["", "ratios of median ms/step (trl/online: our throughput gain over TRL, both with an online reference):"]
    for ratio, value in summary["ratios"].items():
        met = summary["targets_met"].get(ratio)
        verdict = "" if met is None else f"target {TARGETS[ratio]}: " + ("PASS" if met else "FAIL")
        lines.append(f"  {ratio:18}{value:6.2f}   {verdict}")
    return "\n".join(lines)


def config_from_arguments(quick: bool = False, **options: int | None) -> BenchConfig:
    """The defaults (or ``QUICK`` with ``quick``), overridden by the options that are not ``None``."""
    return BenchConfig(
        **(QUICK if quick else {}) | {name: value for name, value in options.items() if value is not None}
    )


if __name__ == "__main__":  # a child of run_bench: VARIANT WORKSPACE OUTPUT_DIR RESULT_PATH
    variant_name, workspace_dir, run_dir, result_file = sys.argv[1:]
    Path(result_file).write_text(json.dumps(run_variant(variant_name, Path(workspace_dir), Path(run_dir))))
