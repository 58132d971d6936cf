"""One training run: everything a trainer does around its own update, shared by every trainer.

The SFT, DPO, reward-model and Unlikelihood trainers (``dpo_teach.train.loop``) and PPO
(``dpo_teach.train.ppo``) differ only in the update they make; this class does the rest, once:

    with TrainingRun(config, accelerator, "DPO", callbacks) as run:   # the caller's accelerator, or its own
        run.add_input("train_data", fingerprint, source)  # what it starts from: data, model, tokenizer
        model, optimizer, scheduler = run.prepare(model, optimizer, scheduler)
        run.start(model, tokenizer, "3,000 pairs")    # resume or refuse, metrics log, trackers, bar, step-0 callbacks
        for step in run.steps():                      # 0-based optimizer steps still to take
            ...                                       # the trainer's update, its values checked by run.check_finite
            run.log({"step": step + 1, ...})          # metrics.jsonl, trackers, progress bar
            run.end_step(step, {...})                 # callbacks, then a checkpoint when one is due
        final = run.finish()                          # OUTPUT/final

- **Processes**: a run ends only an accelerator it created. Whoever owns the processes (the sweep, a
  notebook, ``accelerate launch`` around one trainer) creates one accelerator and passes it to every
  trainer; the run then releases what it prepared (``free_memory``) and leaves the process group alone.
- **Seeding**: the run draws from its own random streams (Python, NumPy, torch, CUDA), seeded with
  ``config.seed`` on entry and forked from the caller's, which are restored on exit. Checkpoints save these
  streams and resuming restores them, so a resumed run continues bit for bit.
- **Callbacks**: ``callback(step, model)`` runs on every process after each optimizer step (``step`` counts
  the steps taken) and at step 0 of a fresh run, before that step's checkpoint, under autocast. It returns
  metrics to log with an ``eval/`` prefix, or None. The trainers' held-out evaluations are callbacks
  (:func:`every`), and so is any evaluation a caller wants (the frontier's reward and KL, a best checkpoint).
  Because the callbacks of step s run before its checkpoint is written, a run resumed from step s has
  already made every callback of the steps up to s.
- **Inputs**: the trainer records fingerprints of what it starts from (:meth:`TrainingRun.add_input`: the
  training data's content, the starting model's weights, the tokenizer); every checkpoint keeps them, and a
  resumed run must start from the same ones (``dpo_teach.train.checkpoint.check_resumable``).
- **Faults**: a loss or gradient norm that is not finite stops the run before its update; weights that are not
  finite are never checkpointed, so the last good checkpoint an error names is finite (``NonFiniteError``).
  Ctrl-C stops the run after the step in progress, with a checkpoint of it (``dpo_teach.train.interrupt``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from dpo_teach import io
from dpo_teach.errors import ConfigError, Interrupted, NonFiniteError
from dpo_teach.train.checkpoint import (
    checkpoint_dir,
    prune_checkpoints,
    resume_or_start,
    save_checkpoint,
    save_final,
)
from dpo_teach.train.config import TrainConfig
from dpo_teach.train.fingerprint import SAMPLED_VALUES, model_fingerprint, tokenizer_fingerprint
from dpo_teach.train.interrupt import StopRequest
from dpo_teach.train.metrics_log import MetricsLog

Callback = Callable[[int, torch.nn.Module], dict[str, float] | None]
"""``callback(step, model) -> metrics or None`` (module docstring)."""


def every(interval: int, max_steps: int, evaluate: Callable[[torch.nn.Module], dict[str, float]]) -> Callback:
    """A callback running ``evaluate(model)`` at step 0, every ``interval`` steps and at ``max_steps``
    (never when ``interval`` is 0)."""

    def callback(step: int, model: torch.nn.Module) -> dict[str, float] | None:
        due = interval > 0 and (step % interval == 0 or step == max_steps)
        return evaluate(model) if due else None

    return callback


def step_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for the random choices of epoch or step ``index`` of a run seeded with ``seed``: the data
    order of an epoch (``dpo_teach.train.loop``), a PPO step's sampling seeds and minibatch order. It depends
    only on (seed, index), so a resumed run draws what the uninterrupted one drew. The seed is
    ``seed * 1_000_003 + index``: 1,000,003 is a prime above any index, so distinct pairs give distinct seeds."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


@contextlib.contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """Run the block on random streams of its own, seeded with ``seed``; the caller's Python, NumPy, torch and CUDA
    streams are restored afterwards (what ``accelerate.utils.set_seed`` seeds, without its lasting effect)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)  # the CPU and every CUDA device
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def make_accelerator(mixed_precision: str = "no", log_with: Sequence[str] = (), project_dir: str | None = None):
    """The accelerator of a run, or of a sweep that passes it to every trainer.

    The scheduler steps once per optimizer step (``step_scheduler_with_optimizer=False``): ``batch_size`` is
    already the global batch, so warmup counts optimizer steps whatever the number of processes. A requested
    tracker that is not installed is an error, not a warning. accelerate keeps one precision per Python
    process: a second accelerator with another one raises its own error (restart, or pass one accelerator).
    """
    try:
        accelerator = Accelerator(
            mixed_precision=mixed_precision,
            log_with=list(log_with) or None,
            project_dir=project_dir,
            step_scheduler_with_optimizer=False,
        )
    except ValueError as error:
        if "already been initialized" not in str(error):
            raise
        current = AcceleratorState().mixed_precision
        raise ConfigError(
            f"mixed_precision: this process already trains with {current!r} and accelerate allows one precision per "
            f"process, so {mixed_precision!r} cannot start here; restart the process (or the notebook's kernel), or "
            "give every trainer of the process the same mixed_precision"
        ) from None
    active = {getattr(tracker, "value", tracker) for tracker in accelerator.log_with}
    missing = [name for name in log_with if name not in active]
    if missing:
        raise ConfigError(f"log_with: {missing} requested but not installed; pip install {' '.join(missing)}")
    return accelerator


def _check_accelerator(accelerator: Accelerator, config: TrainConfig) -> None:
    """Refuse an accelerator this run cannot train with, naming the setting and the fix."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # DeepSpeed steps its optimizer inside accelerator.backward whenever gradients sync; the trainers accumulate
        # by hand and check the loss before the update, so under DeepSpeed they would update every micro-batch.
        raise ConfigError("DeepSpeed is not supported by these trainers; use DDP or FSDP (accelerate config)")
    if accelerator.mixed_precision != config.mixed_precision:
        raise ConfigError(
            f"mixed_precision: the config asks for {config.mixed_precision!r} but the accelerator passed in uses "
            f"{accelerator.mixed_precision!r}; make them agree (accelerate allows one precision per process)"
        )
    if accelerator.step_scheduler_with_optimizer:
        raise ConfigError(
            "the accelerator passed in steps schedulers once per process; create it with make_accelerator "
            "(step_scheduler_with_optimizer=False), so warmup counts optimizer steps"
        )
    active = {getattr(tracker, "value", tracker) for tracker in accelerator.log_with}
    missing = [name for name in config.trackers if name not in active]
    if missing:
        raise ConfigError(f"log_with: {missing} requested, but the accelerator passed in was created without them")


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """RMSprop (the paper's) or AdamW over the trainable parameters."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def learning_rate_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate of optimizer step s (0-based), a factor of ``config.learning_rate``:

    warmup:  min(1, (s + 1) / (warmup_steps + 1))                      (the DPO authors' trainer)
    linear:  times 1 - s / max_steps, so the last step takes 1 / max_steps of it (CleanRL's anneal_lr,
             Huang et al. 2022, "The 37 implementation details of PPO", detail 4)
    """
    warmup_steps, max_steps, linear = config.warmup_steps, config.max_steps, config.lr_schedule == "linear"

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / (warmup_steps + 1)) * ((1.0 - step / max_steps) if linear else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingRun:
    """Setup, resume or refuse, logging, the progress bar, checkpoints, finite checks, callbacks, Ctrl-C and the
    finish of one run of ``config`` (module docstring). Use it as a context manager."""

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Accelerator | None = None,
        name: str = "train",
        callbacks: Sequence[Callback] = (),
    ) -> None:
        self.config = config
        self.name = name
        self.callbacks = list(callbacks)
        self.output_dir = io.make_directory(config.output_dir, "output_dir")
        self.owns_accelerator = accelerator is None
        self.accelerator = accelerator if accelerator is not None else make_accelerator(
            config.mixed_precision, config.trackers, config.output_dir
        )  # fmt: skip
        _check_accelerator(self.accelerator, config)
        self.inputs: dict[str, dict[str, str]] = {}
        """What the run starts from, by name: ``{"fingerprint": ..., "source": ...}`` (:meth:`add_input`)."""
        self.start_step = 0
        self.last_checkpoint = "none yet"
        self._models: list[torch.nn.Module] = []
        self._exit = contextlib.ExitStack()
        self._trackers: list = []
        self._bar = None
        self._stop = StopRequest(announce=self.accelerator.is_main_process)

    def __enter__(self) -> TrainingRun:
        self._exit.enter_context(forked_rng(self.config.seed))
        return self

    def __exit__(self, *exception) -> None:
        """Close the bar and this run's trackers, release what it prepared, end the accelerator if it made it, give
        Ctrl-C back its previous meaning."""
        if self._bar is not None:
            self._bar.close()
        for tracker in self._trackers:
            tracker.finish()
            self.accelerator.trackers.remove(tracker)
        self.accelerator.free_memory()
        if self.owns_accelerator:
            self.accelerator.end_training()
        self._exit.close()

    def add_input(self, name: str, fingerprint: str, source: str) -> None:
        """Record something the run starts from (its data, model or tokenizer) by a fingerprint of its content
        (``dpo_teach.train.fingerprint``). Checkpoints keep the fingerprints and resuming refuses a change, naming
        ``source`` (e.g. ``"train_data runs/pairs/train.jsonl"``). Call it before :meth:`start`."""
        self.inputs[name] = {"fingerprint": fingerprint, "source": source}

    def add_model_and_tokenizer(self, model: torch.nn.Module, tokenizer, model_passed: bool, tokenizer_passed: bool):
        """:meth:`add_input` of the starting model's weights and of the tokenizer, named by where they came from:
        ``config.model`` or the caller (``*_passed``)."""
        name = self.config.model
        model_source = "the model passed in" if model_passed else f"model {name}"
        self.add_input("model", model_fingerprint(model, SAMPLED_VALUES), model_source)
        tokenizer_source = "the tokenizer passed in" if tokenizer_passed else f"the tokenizer of model {name}"
        self.add_input("tokenizer", tokenizer_fingerprint(tokenizer), tokenizer_source)

    def prepare(self, *objects):
        """``accelerator.prepare`` the models, optimizer and scheduler (in that order, as the caller lists them).

        Under mixed precision, accelerate's prepared forward returns every output upcast to float32: for a
        language model a float32 copy of the (2B, T, V) logits, the largest tensor of a step. The plain forward
        is restored instead, and the run calls the trainer's code under ``accelerator.autocast()``;
        ``dpo_teach.logprobs`` upcasts only the chunks it needs.
        """
        prepared = self.accelerator.prepare(*objects)
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self._models = [item for item in prepared if isinstance(item, torch.nn.Module)]
        if self.accelerator.native_amp:
            for model in self._models:
                self.accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        return prepared if len(prepared) > 1 else prepared[0]

    def start(self, model: torch.nn.Module, tokenizer, description: str) -> dict | None:
        """Resume from the newest checkpoint that loads (or refuse one of other settings or inputs), open the metrics
        log, the trackers and the progress bar, make the step-0 callbacks of a fresh run, and from then on take
        Ctrl-C as a request to stop after the step in progress (``dpo_teach.train.interrupt``). ``model``
        (prepared) is what the callbacks and checkpoints see; returns the resumed trainer state, or None."""
        self.model, self.tokenizer = model, tokenizer
        accelerator, config = self.accelerator, self.config
        resumed = resume_or_start(accelerator, self.output_dir, asdict(config), self.inputs)
        self.start_step = resumed["step"] if resumed else 0
        if resumed:
            self.last_checkpoint = str(checkpoint_dir(self.output_dir, self.start_step))
        self.metrics = MetricsLog(accelerator, self.output_dir, self.start_step)
        before = list(accelerator.trackers)
        accelerator.init_trackers("dpo-teach", config=asdict(config))
        self._trackers = [tracker for tracker in accelerator.trackers if tracker not in before]
        finished = " (already finished: nothing to train)" if self.start_step == config.max_steps else ""
        accelerator.print(
            f"{self.name}: {accelerator.num_processes} process(es) on {accelerator.device}, mixed precision "
            f"{accelerator.mixed_precision}, {description}, "
            + (f"resuming from step {self.start_step}{finished}" if resumed else "starting at step 0")
        )
        if not resumed:
            self._call_back(0)
        self._bar = tqdm(
            total=config.max_steps,
            initial=self.start_step,
            desc=self.name,
            mininterval=1.0,  # in Jupyter every redraw is a message; thousands of them can overflow the kernel's queue
            disable=not (config.progress_bar and accelerator.is_main_process),
        )
        self._exit.enter_context(self._stop)
        return resumed

    def add_evaluation(self, evaluate: Callable[[torch.nn.Module], dict[str, float]]) -> None:
        """Make ``evaluate(model)`` (the trainer's own held-out evaluation) the first callback, called at step 0,
        every ``eval_every`` steps and at the last (:func:`every`)."""
        self.callbacks.insert(0, every(self.config.eval_every, self.config.max_steps, evaluate))

    def steps(self) -> range:
        """The 0-based optimizer steps still to take."""
        return range(self.start_step, self.config.max_steps)

    def check_finite(self, what: str, value: float, step: int, where: str = "") -> None:
        """Stop the run before the update of ``step`` (0-based) if ``value`` (named ``what``) is not finite."""
        if not math.isfinite(value):
            raise NonFiniteError(
                f"{what} is {value} at step {step + 1}{where}; stopped before updating the weights. "
                f"Last good checkpoint: {self.last_checkpoint}"
            )

    def check_gradient_norm(self, grad_norm: float, step: int, where: str = "") -> None:
        """:meth:`check_finite` of the gradient norm, except under fp16, whose gradient scaler skips an update with
        overflowed gradients and lowers its scale instead."""
        if self.accelerator.scaler is None:
            self.check_finite("the gradient norm", grad_norm, step, where)

    def log(self, record: dict, **postfix: str) -> None:
        """Write ``record`` (``{"step": s, ...}``) to metrics.jsonl and the trackers; advance the bar."""
        self.metrics.write(record)
        self._bar.update(1)
        self._bar.set_postfix(postfix, refresh=False)  # redrawn at most once a second (mininterval)

    def end_step(self, step: int, trainer_state: dict) -> None:
        """After the update of ``step`` (0-based): the callbacks, then a checkpoint when one is due, recording
        ``trainer_state`` (what the trainer needs to resume besides the weights, optimizer and RNG). After Ctrl-C,
        a checkpoint of this step in any case, then :class:`~dpo_teach.errors.Interrupted`."""
        done, config = step + 1, self.config
        self._call_back(done)
        stopping = self._stop_requested()
        if stopping or (config.save_every and done % config.save_every == 0) or done == config.max_steps:
            self._check_weights(done)
            state = {"step": done, **trainer_state, "config": asdict(config), "inputs": self.inputs}
            checkpoint = save_checkpoint(self.accelerator, self.model, self.tokenizer, self.output_dir, state)
            self.last_checkpoint = str(checkpoint)
            prune_checkpoints(self.accelerator, self.output_dir, config.keep_checkpoints)
        if stopping:
            raise self._interrupted(done)

    def finish(self) -> Path:
        """Write ``OUTPUT/final`` (the trained model and its tokenizer) and return it; then, with
        ``delete_checkpoints_at_end``, delete the run's checkpoints. A Ctrl-C that arrived after the last step's
        check (while its checkpoint was written) stops the run here, that checkpoint complete."""
        self._bar.close()
        self._stop.release()
        if self._stop_requested():
            raise self._interrupted(self.config.max_steps)
        final = save_final(self.accelerator, self.model, self.tokenizer, self.output_dir)
        if self.config.delete_checkpoints_at_end:
            prune_checkpoints(self.accelerator, self.output_dir, keep=0)
            self.accelerator.wait_for_everyone()
        return final

    def _interrupted(self, done: int) -> Interrupted:
        return Interrupted(
            f"{self.name}: stopped by Ctrl-C after step {done} of {self.config.max_steps}; its checkpoint "
            f"{self.last_checkpoint} lets the same run (resume: true) continue as if never stopped"
        )

    def _stop_requested(self) -> bool:
        """Whether Ctrl-C reached any process: all of them must stop after the same step."""
        if self.accelerator.num_processes == 1:
            return self._stop.requested
        requested = torch.tensor(float(self._stop.requested), device=self.accelerator.device)
        return self.accelerator.reduce(requested, reduction="sum").item() > 0

    def _check_weights(self, done: int) -> None:
        """Refuse to checkpoint weights that are not all finite (an update can overflow with a finite loss and
        gradient, e.g. at a huge learning rate), so the last good checkpoint a message names is finite."""
        parameters = [parameter for model in self._models for parameter in model.parameters()]
        bad = torch.stack([~torch.isfinite(parameter).all() for parameter in parameters]).sum()  # tensors with inf/NaN
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item():
            raise NonFiniteError(
                f"the weights are not finite after the update of step {done} ({bad.item()} tensors hold inf or NaN); "
                f"no checkpoint was written from them. Last good checkpoint: {self.last_checkpoint}. A smaller "
                "learning_rate (or a longer warmup) may help"
            )

    def _call_back(self, step: int) -> None:
        metrics = {}
        for callback in self.callbacks:
            with self.accelerator.autocast():
                metrics.update(callback(step, self.model) or {})
        if metrics:
            self.metrics.write({"step": step, **{f"eval/{name}": value for name, value in metrics.items()}})
