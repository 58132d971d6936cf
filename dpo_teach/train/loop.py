"""One small training loop on ``accelerate``, shared by every trainer (SFT, DPO, and later the reward model).

A trainer supplies an :class:`Objective`: how many items a micro-batch's loss sums over (examples
for DPO, tokens for SFT) and the summed loss with per-example metrics. The loop does the rest:

- data order: each epoch is a seeded permutation of the examples; optimizer step s takes the s-th
  slice of ``batch_size`` examples, split into ``gradient_accumulation_steps`` micro-batches and
  across processes. The order depends only on (seed, step), so a resumed run sees the same data;
- gradient accumulation with the right scaling: every micro-batch's summed loss is divided by the
  number of items in the whole optimizer step, over all processes (times the process count, since
  DDP averages gradients). The update therefore equals one large batch's, whatever the split;
- device placement, mixed precision, DDP / FSDP: ``accelerate`` (run under ``accelerate launch``);
  gradients are synchronized only on the last micro-batch. DeepSpeed is refused: it steps the
  optimizer inside ``backward``, before the loop could check the loss;
- gradient clipping, linear warmup, metrics gathered over processes (means of per-example values,
  so an accuracy cannot exceed 1), a tqdm bar, ``metrics.jsonl`` and accelerate's trackers;
- a checkpoint every ``save_every`` steps (``dpo_teach.train.checkpoint``) and resume from the
  newest; a non-finite loss stops the run before the update, naming the step.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from dpo_teach.train.checkpoint import (
    prune_checkpoints,
    resume_or_start,
    save_checkpoint,
    save_final,
)
from dpo_teach.train.config import TrainConfig
from dpo_teach.train.sharded import to_device

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    """What an objective computes on one micro-batch."""

    loss_sum: torch.Tensor
    """() the sum of the items' losses, attached to the graph."""
    metrics: dict[str, torch.Tensor]
    """name -> (b,) per-example values, detached; the loop logs their mean over the whole step."""


class Objective(Protocol):
    """The part of a trainer that knows its loss."""

    def num_items(self, batch: Batch) -> int:
        """How many items (examples or tokens) ``loss_sum`` sums over for this micro-batch."""

    def __call__(self, model: torch.nn.Module, batch: Batch) -> StepOutput:
        """Forward pass and loss on one micro-batch."""


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The accelerator of a run: mixed precision and trackers from the config.

    accelerate keeps one global state per Python process and refuses a second Accelerator with another
    precision; a notebook that runs SFT in float32 and then DPO in bfloat16 needs both, so the state is
    reset first, as transformers' Trainer does (the process group of ``accelerate launch`` is kept).
    The scheduler steps once per optimizer step (``step_scheduler_with_optimizer=False``):
    ``batch_size`` is already the global batch, so warmup counts optimizer steps whatever the
    number of processes. A requested tracker that is not installed is an error, not a warning.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=config.trackers or None,
        project_dir=config.output_dir,
        step_scheduler_with_optimizer=False,
    )
    active = {getattr(tracker, "value", tracker) for tracker in accelerator.log_with}
    missing = [name for name in config.trackers if name not in active]
    if missing:
        raise ValueError(f"log_with: {missing} requested but not installed; pip install {' '.join(missing)}")
    return accelerator


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop (the paper's) or AdamW over the trainable parameters."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def warmup_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(s) = learning_rate * min(1, (s + 1) / (warmup_steps + 1)), as in the DPO authors' trainer."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))


def micro_batch_indices(
    num_examples: int, config: TrainConfig, step: int, num_processes: int, process_index: int
) -> list[list[int]]:
    """Example indices of this process's micro-batches for optimizer step ``step`` (0-based).

    Epoch e is ``randperm(num_examples)`` seeded by (seed, e); its last incomplete batch is dropped.
    Returns ``gradient_accumulation_steps`` lists of ``batch_size / (accumulation * processes)`` indices.
    """
    per_step = config.gradient_accumulation_steps * num_processes
    if config.batch_size % per_step:
        raise ValueError(
            f"batch_size: {config.batch_size} examples cannot be split into {config.gradient_accumulation_steps} "
            f"accumulation steps x {num_processes} processes; choose a multiple of {per_step}"
        )
    batches_per_epoch = num_examples // config.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"batch_size: {config.batch_size} is larger than the {num_examples} training examples")
    epoch, position = divmod(step, batches_per_epoch)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator)
    batch = order[position * config.batch_size : (position + 1) * config.batch_size]
    micro_size = config.batch_size // per_step
    return batch.view(config.gradient_accumulation_steps, num_processes, micro_size)[:, process_index].tolist()


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (main process) and to accelerate's trackers.

    On resume from step s, lines after s are dropped: they are about to be computed again.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, resumed_step: int) -> None:
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            kept = []
            if resumed_step and self.path.exists():
                kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.accelerator.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])


def train_loop(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer,
    objective: Objective,
    train_examples: Sequence,
    collate: Callable[[list], Batch],
    config: TrainConfig,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
) -> Path:
    """Train ``model`` on ``train_examples`` for ``config.max_steps`` optimizer steps; returns the final model dir.

    ``collate`` turns a list of examples into a batch of tensors; ``evaluate(model)`` runs on every
    process and returns global held-out metrics (logged with an ``eval/`` prefix).
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed steps its optimizer inside accelerator.backward whenever gradients sync; this loop accumulates
        # by hand and checks the loss before the update, so under DeepSpeed it would update every micro-batch.
        raise ValueError("DeepSpeed is not supported by this loop; use DDP or FSDP (accelerate config)")
    output_dir = Path(config.output_dir)
    set_seed(config.seed)
    optimizer = build_optimizer(model, config)
    scheduler = warmup_schedule(optimizer, config.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.native_amp:
        # Under mixed precision, accelerate's prepared forward returns every output upcast to float32: for a
        # language model a float32 copy of the (2B, T, V) logits, the largest tensor of a step. Its plain forward
        # is restored instead, and the loop runs it under accelerator.autocast(); dpo_teach.logprobs upcasts
        # only the chunks it needs.
        accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    resumed = resume_or_start(accelerator, output_dir, asdict(config))
    start = resumed["step"] if resumed else 0
    log = MetricsLog(accelerator, output_dir, start)
    accelerator.init_trackers("dpo-teach", config=asdict(config))
    last_checkpoint = f"step {start}" if resumed else "none yet"
    accelerator.print(
        f"{type(objective).__name__}: {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}, {len(train_examples)} training examples, "
        + (f"resuming from step {start}" if resumed else "starting at step 0")
    )
    if evaluate is not None and config.eval_every and start == 0:
        with accelerator.autocast():
            evaluation = evaluate(model)
        log.write({"step": 0, **{f"eval/{key}": value for key, value in evaluation.items()}})
    bar = tqdm(
        total=config.max_steps,
        initial=start,
        desc=type(objective).__name__,
        mininterval=1.0,  # in Jupyter every redraw is a message; thousands of them can overflow the kernel's queue
        disable=not (config.progress_bar and accelerator.is_main_process),
    )
    for step in range(start, config.max_steps):
        started = time.perf_counter()
        model.train()
        indices = micro_batch_indices(
            len(train_examples), config, step, accelerator.num_processes, accelerator.process_index
        )
        batches = [to_device(collate([train_examples[i] for i in chunk]), accelerator.device) for chunk in indices]
        local_items = torch.tensor(
            float(sum(objective.num_items(batch) for batch in batches)), device=accelerator.device
        )
        total_items = accelerator.reduce(local_items, reduction="sum")
        scale = accelerator.num_processes / total_items  # DDP averages gradients over processes
        loss_sum, tokens, metrics = torch.zeros((), device=accelerator.device), 0, {}
        for index, batch in enumerate(batches):
            synchronize = index == len(batches) - 1
            with contextlib.nullcontext() if synchronize else accelerator.no_sync(model), accelerator.autocast():
                output = objective(model, batch)
                accelerator.backward(output.loss_sum * scale)
            loss_sum += output.loss_sum.detach().float()
            tokens += int(batch["attention_mask"].sum())
            for name, values in output.metrics.items():
                metrics.setdefault(name, []).append(values.float())
        loss = (accelerator.reduce(loss_sum, reduction="sum") / total_items).item()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss is {loss} at step {step + 1}; stopped before updating the weights. "
                f"Last good checkpoint: {last_checkpoint}"
            )
        max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
        if not math.isfinite(grad_norm) and accelerator.scaler is None:
            raise FloatingPointError(
                f"the gradient norm is {grad_norm} at step {step + 1} (loss {loss}); stopped before updating the "
                f"weights. Last good checkpoint: {last_checkpoint}"
            )
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()  # fp16: the gradient scaler skips a step whose gradients overflowed and lowers its scale
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total_tokens = accelerator.reduce(torch.tensor(float(tokens), device=accelerator.device), reduction="sum")
        record = {"step": step + 1, "loss": loss}
        for name, values in metrics.items():
            record[name] = accelerator.gather(torch.cat(values)).mean().item()
        step_seconds = time.perf_counter() - started
        record.update(
            grad_norm=grad_norm,
            lr=learning_rate,
            step_seconds=step_seconds,
            tokens_per_second=total_tokens.item() / step_seconds,
        )
        log.write(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # redrawn at most once a second (mininterval)
        finished = step + 1 == config.max_steps
        if evaluate is not None and config.eval_every and ((step + 1) % config.eval_every == 0 or finished):
            with accelerator.autocast():
                evaluation = evaluate(model)
            log.write({"step": step + 1, **{f"eval/{key}": value for key, value in evaluation.items()}})
        if (config.save_every and (step + 1) % config.save_every == 0) or finished:
            trainer_state = {
                "step": step + 1,
                "examples_seen": (step + 1) * config.batch_size,
                "config": asdict(config),
            }
            last_checkpoint = str(save_checkpoint(accelerator, model, tokenizer, output_dir, trainer_state))
            prune_checkpoints(accelerator, output_dir, config.keep_checkpoints)
    bar.close()
    final = save_final(accelerator, model, tokenizer, output_dir)
    accelerator.end_training()
    return final
