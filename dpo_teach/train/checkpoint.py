"""Checkpoints written atomically, so that killing a run at any moment leaves the last one intact.

A checkpoint is a directory ``OUTPUT/checkpoints/step-00000100`` holding

    policy/              the model and tokenizer (``save_pretrained``: load it like any checkpoint)
    state/               ``accelerator.save_state``: weights, optimizer, scheduler, RNG states of every process
    trainer_state.json   the step, the data position, the config and the fingerprints of the run's inputs

It is written under a temporary name and renamed when complete (``dpo_teach.io``), so a directory
named ``step-*`` is always whole; a full disk leaves the previous checkpoint as it was. Resuming
(:func:`resume_or_start`) checks that the checkpoint belongs to this run (its settings and inputs) and
loads ``state/``: the optimizer, the scheduler and every RNG continue exactly where they stopped (DDP and
FSDP; the trainers refuse DeepSpeed, see ``dpo_teach.train.run``). A checkpoint that does not load
completely is reported, naming the file, and the next older one is used.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object, load
from safetensors.torch import load_file

from dpo_teach import io
from dpo_teach.errors import DiskFullError, ResumeError

PREFIX = "step-"


def _is_not_the_tied_weights_warning(record: logging.LogRecord) -> bool:
    return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tied_weights() -> Iterator[None]:
    """Drop accelerate's "Removed shared tensor" warning while saving: GPT-2 ties its input and output
    embeddings, safetensors stores the shared tensor once, and loading restores the tie (resume is tested
    to reproduce the weights bit for bit). Printed at every checkpoint, it would only be noise."""
    logger = logging.getLogger("accelerate.utils.other")
    logger.addFilter(_is_not_the_tied_weights_warning)
    try:
        yield
    finally:
        logger.removeFilter(_is_not_the_tied_weights_warning)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{PREFIX}{step:08d}"


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(path for path in root.iterdir() if path.name.startswith(PREFIX) and path.is_dir())


def save_checkpoint(accelerator: Accelerator, model, tokenizer, output_dir: str | Path, trainer_state: dict) -> Path:
    """Write the checkpoint of ``trainer_state["step"]``; every process must call this. Returns its path.

    A full disk is a :class:`DiskFullError` naming the path and the previous checkpoint, which is intact: nothing of
    it is touched before the new one is complete. What the failed write left is deleted, to give the space back.
    """
    final = checkpoint_dir(output_dir, trainer_state["step"])
    temporary = io.temporary_path(final)
    if accelerator.is_main_process:
        io.remove_temporary_directory(final)  # left by a run killed while writing
    accelerator.wait_for_everyone()
    try:
        with _quiet_tied_weights():
            accelerator.save_state(str(temporary / "state"))
        accelerator.wait_for_everyone()  # every process has written its RNG state (and shards) before the rename
        state_dict = accelerator.get_state_dict(model)  # gathers shards under FSDP
        if accelerator.is_main_process:
            accelerator.unwrap_model(model).save_pretrained(temporary / "policy", state_dict=state_dict)
            if tokenizer is not None:
                tokenizer.save_pretrained(temporary / "policy")
            (temporary / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            io.replace_directory(temporary, final)  # the same step saved again (a resumed run) is replaced safely
    except Exception as error:  # torch.save and safetensors raise their own types for a failed write
        if not _disk_full(error, temporary.parent):
            raise
        io.remove_temporary_directory(final)
        kept = complete_checkpoints(output_dir)
        intact = f"the previous checkpoint, {kept[-1]}, is intact" if kept else "there is no earlier checkpoint"
        raise DiskFullError(
            f"disk full while writing the checkpoint of step {trainer_state['step']} to {temporary} "
            f"({getattr(error, 'filename', None) or error}); {intact}. Free space on that disk and run the same "
            "command again to resume"
        ) from error
    accelerator.wait_for_everyone()
    return final


def _disk_full(error: BaseException, directory: Path) -> bool:
    """Whether a failed write failed for want of space: ENOSPC or EDQUOT, or (torch.save and safetensors report a
    failed write without its errno) less than 1 MiB left on the disk of ``directory``."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(directory).free < 2**20
    except OSError:
        return False


def save_final(accelerator: Accelerator, model, tokenizer, output_dir: str | Path) -> Path:
    """Write ``OUTPUT/final``: the trained model (gathered under FSDP) and its tokenizer, for ``from_pretrained``.
    Every process must call this; returns the directory."""
    final = Path(output_dir) / "final"
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(final, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(accelerator: Accelerator, output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (on the main process); ``keep=0`` deletes them all."""
    if not accelerator.is_main_process:
        return
    checkpoints = complete_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep)]:  # keep > len: nothing (a negative bound would cut)
        shutil.rmtree(old)


def resume_or_start(accelerator: Accelerator, output_dir: str | Path, config: dict, inputs: dict) -> dict | None:
    """The trainer state of the newest checkpoint that loads, restored into the prepared objects, when
    ``config["resume"]`` and there is one; None for a run that starts at step 0.

    Every process calls this. A checkpoint must come from a run of the same ``config`` (up to
    :data:`RESUMABLE_CHANGES`) and ``inputs`` (:func:`check_resumable`). It must load completely: its
    trainer_state.json, every process's RNG states (which accelerate would skip silently if unreadable, and a
    resumed run with dropout would then differ) and everything ``accelerator.load_state`` reads. A checkpoint that
    does not is reported, naming the broken file, and the next older one is tried. This checks what can be read,
    not every bit: a file that still parses with flipped bits inside its tensors is not detected.

    Refused (:class:`ResumeError`): starting afresh over an earlier run's checkpoints (they would be mixed with
    this run's), and a directory whose checkpoints all fail to load (delete them to start over).
    """
    checkpoints = complete_checkpoints(output_dir)
    if not config["resume"]:
        if checkpoints:
            raise ResumeError(
                f"resume: false, but {Path(output_dir) / 'checkpoints'} holds checkpoints of an earlier run, which "
                "would be mixed with this one's; use another output_dir or delete them"
            )
        return None
    broken = []
    for checkpoint in reversed(checkpoints):
        trainer_state, problem = _read_trainer_state(checkpoint)
        if trainer_state is not None:
            check_resumable(trainer_state, config, inputs, str(checkpoint))
            problem = _load_state(accelerator, checkpoint)
        if problem is None:
            if broken:
                accelerator.print(f"{'; '.join(broken)}: resuming from {checkpoint.name}, the newest that loads")
            return trainer_state
        broken.append(f"{checkpoint.name} is broken ({problem})")
    if broken:
        raise ResumeError(
            f"no checkpoint in {Path(output_dir) / 'checkpoints'} loads: {'; '.join(broken)}. Delete that directory to "
            "start over (or use another output_dir)"
        )
    return None


def _read_trainer_state(checkpoint: Path) -> tuple[dict | None, str | None]:
    """``(trainer state, None)``, or ``(None, what is wrong with trainer_state.json)``."""
    path = checkpoint / "trainer_state.json"
    try:
        trainer_state = json.loads(path.read_text())
        missing = [key for key in ("step", "config") if key not in trainer_state]
    except (OSError, ValueError, TypeError) as error:
        return None, f"{path}: {type(error).__name__}: {error}"
    return (None, f"{path}: no {missing}") if missing else (trainer_state, None)


def _load_state(accelerator: Accelerator, checkpoint: Path) -> str | None:
    """Restore ``checkpoint/state`` into the prepared objects; None when it loaded, else what is broken (the same
    answer on every process, so that all of them fall back together)."""
    state = checkpoint / "state"
    rng = state / f"random_states_{accelerator.process_index}.pkl"
    problem = _agreed(accelerator, _unreadable(rng, RNG_KEYS))  # accelerate would skip an unreadable one silently
    if problem is not None:
        return problem
    try:
        accelerator.load_state(str(state))
    except Exception as error:  # whatever a truncated file makes its reader raise: name the file
        files = sorted(path for path in state.glob("*") if path.is_file())  # none if state/ itself is missing
        problem = next(filter(None, map(_unreadable, files)), None) or f"{state}: {type(error).__name__}: {error}"
    return _agreed(accelerator, problem)


RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")
"""What ``accelerator.save_state`` writes into ``random_states_<process>.pkl`` on every device."""


def _unreadable(path: Path, keys: Sequence[str] = ()) -> str | None:
    """What is wrong with one file of ``state/`` (None if it reads), loaded as accelerate loads it."""
    try:
        if path.suffix == ".safetensors":
            load_file(path)
        else:
            content = load(path)
            missing = [key for key in keys if key not in content]
            if missing:
                return f"{path}: no {missing}"
    except Exception as error:  # a truncated file raises whatever its reader raises
        return f"{path}: {type(error).__name__}: {error}"
    return None


def _agreed(accelerator: Accelerator, problem: str | None) -> str | None:
    """Every process's ``problem`` joined (None if none has one), the same on every process."""
    problems = gather_object([problem]) if accelerator.num_processes > 1 else [problem]
    return "; ".join(filter(None, problems)) or None


RESUMABLE_CHANGES = frozenset(
    {"output_dir", "max_steps", "eval_data", "eval_every", "eval_batch_size", "save_every", "keep_checkpoints",
     "delete_checkpoints_at_end", "log_with", "resume", "progress_bar", "reference_cache_dir"}
)  # fmt: skip
"""Config fields a resumed run may change: they do not alter the updates already made or still to come
(``max_steps`` may grow, not shrink below the checkpoint's step)."""


def check_resumable(trainer_state: dict, config: dict, inputs: dict, checkpoint: str) -> None:
    """Raise :class:`ResumeError` unless the run of ``config`` starting from ``inputs`` may continue from the checkpoint
    of ``trainer_state``: every field that matters to training (the data, the model, the optimizer, the loss) must
    be the checkpoint's, every input's fingerprint too (``dpo_teach.train.fingerprint``: the training data's content,
    the starting model's weights, the tokenizer), and ``max_steps`` must not be below the checkpoint's step (a
    finished run is not cut short by rewriting its final model), so a resumed run never silently continues a
    different one."""
    saved = trainer_state["config"]
    # a linear learning-rate decay ends at max_steps: another max_steps changes every later step's learning rate
    allowed = RESUMABLE_CHANGES - ({"max_steps"} if config.get("lr_schedule") == "linear" else set())
    changed = sorted(name for name in config if name not in allowed and saved.get(name, config[name]) != config[name])
    if changed:
        details = ", ".join(f"{name}: {saved[name]!r} -> {config[name]!r}" for name in changed)
        raise ResumeError(
            f"{checkpoint} was written by a run with other settings ({details}); resuming would continue that run. "
            "Use another output_dir, or delete its checkpoints/ to start over."
        )
    started = {name: entry["fingerprint"] for name, entry in trainer_state.get("inputs", {}).items()}
    now = {name: entry["fingerprint"] for name, entry in inputs.items()}
    differing = [name for name in now if started.get(name, now[name]) != now[name]]  # older checkpoints have none
    if differing:
        details = ", ".join(
            f"{inputs[name]['source']} (fingerprint {started[name][:12]} -> {now[name][:12]})" for name in differing
        )
        raise ResumeError(
            f"{checkpoint} was written by a run that started from other inputs: {details} changed since. Resuming "
            "would continue that run on these. Restore them, or use another output_dir (or delete its checkpoints/) "
            "to start over."
        )
    if trainer_state["step"] > config["max_steps"]:
        raise ResumeError(
            f"max_steps: {checkpoint} has already taken {trainer_state['step']} steps, more than max_steps="
            f"{config['max_steps']}; a run is not shortened by rewriting its final model. Use another output_dir "
            f"(or give max_steps >= {trainer_state['step']})."
        )
