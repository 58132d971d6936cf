"""Checkpoints written atomically, so that killing a run at any moment leaves the last one intact.

A checkpoint is a directory ``OUTPUT/checkpoints/step-00000100`` holding

    policy/              the model and tokenizer (``save_pretrained``: load it like any checkpoint)
    state/               ``accelerator.save_state``: weights, optimizer, scheduler, RNG states of every process
    trainer_state.json   the step, the data position and the config

It is written under a temporary name and renamed when complete (``dpo_teach.io``), so a directory
named ``step-*`` is always whole. Resuming loads ``state/``: the optimizer, the
scheduler and every RNG continue exactly where they stopped (DDP and FSDP; the loop refuses DeepSpeed,
see ``dpo_teach.train.loop``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from accelerate import Accelerator

from dpo_teach import io

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
    """Write the checkpoint of ``trainer_state["step"]``; every process must call this. Returns its path."""
    final = checkpoint_dir(output_dir, trainer_state["step"])
    temporary = io.temporary_path(final)
    if accelerator.is_main_process:
        io.remove_temporary_directory(final)  # left by a run killed while writing
    accelerator.wait_for_everyone()
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
    accelerator.wait_for_everyone()
    return final


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
    for old in checkpoints[: len(checkpoints) - keep]:
        shutil.rmtree(old)


def load_latest_checkpoint(accelerator: Accelerator, output_dir: str | Path, config: dict) -> dict | None:
    """Restore the newest complete checkpoint into the prepared objects; returns its trainer state, or None.

    The checkpoint must come from a run with the same ``config`` up to :data:`RESUMABLE_CHANGES`.
    """
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    trainer_state = json.loads((latest / "trainer_state.json").read_text())
    check_resumable(trainer_state, config, str(latest))
    accelerator.load_state(str(latest / "state"))
    return trainer_state


def resume_or_start(accelerator: Accelerator, output_dir: str | Path, config: dict) -> dict | None:
    """The trainer state of the newest checkpoint, restored into the prepared objects, when ``config["resume"]``
    and there is one; None for a run that starts at step 0. Starting afresh over an earlier run's checkpoints is
    refused: its checkpoints would be mixed with this run's."""
    if config["resume"]:
        return load_latest_checkpoint(accelerator, output_dir, config)
    if complete_checkpoints(output_dir):
        raise ValueError(
            f"resume: false, but {Path(output_dir) / 'checkpoints'} holds checkpoints of an earlier run, which would "
            "be mixed with this one's; use another output_dir or delete them"
        )
    return None


RESUMABLE_CHANGES = frozenset(
    {"output_dir", "max_steps", "eval_data", "eval_every", "eval_batch_size", "save_every", "keep_checkpoints",
     "delete_checkpoints_at_end", "log_with", "resume", "progress_bar", "reference_cache_dir"}
)  # fmt: skip
"""Config fields a resumed run may change: they do not alter the updates already made or still to come."""


def check_resumable(trainer_state: dict, config: dict, checkpoint: str) -> None:
    """Raise ValueError naming every field of ``config`` that differs from the checkpoint's and matters to training
    (the data, the model, the optimizer, the loss), so a resumed run never silently continues a different one."""
    saved = trainer_state["config"]
    changed = sorted(
        name for name in config if name not in RESUMABLE_CHANGES and saved.get(name, config[name]) != config[name]
    )
    if changed:
        details = ", ".join(f"{name}: {saved[name]!r} -> {config[name]!r}" for name in changed)
        raise ValueError(
            f"{checkpoint} was written by a run with other settings ({details}); resuming would continue that run. "
            "Use another output_dir, or delete its checkpoints/ to start over."
        )
