"""Checkpoints written atomically, so that killing a run at any moment leaves the last one intact.

A checkpoint is a directory ``OUTPUT/checkpoints/step-00000100`` holding

    policy/              the model and tokenizer (``save_pretrained``: load it like any checkpoint)
    state/               ``accelerator.save_state``: weights, optimizer, scheduler, RNG states of every process
    trainer_state.json   the step, the data position and the config

It is written under a temporary name and renamed when complete (a rename is atomic on POSIX), so
a directory named ``step-*`` is always whole. Resuming loads ``state/``: the optimizer, the
scheduler and every RNG continue exactly where they stopped, with FSDP and DeepSpeed too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from accelerate import Accelerator

PREFIX = "step-"
TEMPORARY_PREFIX = ".incomplete-"


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
    temporary = final.with_name(TEMPORARY_PREFIX + final.name)
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)  # left by a run killed while writing
    accelerator.wait_for_everyone()
    with _quiet_tied_weights():
        accelerator.save_state(str(temporary / "state"))
    state_dict = accelerator.get_state_dict(model)  # gathers shards under FSDP / DeepSpeed
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(temporary / "policy", state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary / "policy")
        (temporary / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(accelerator: Accelerator, output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (on the main process)."""
    if not accelerator.is_main_process:
        return
    for old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old)


def load_latest_checkpoint(accelerator: Accelerator, output_dir: str | Path) -> dict | None:
    """Restore the newest complete checkpoint into the prepared objects; returns its trainer state, or None."""
    checkpoints = complete_checkpoints(output_dir)
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    accelerator.load_state(str(latest / "state"))
    return json.loads((latest / "trainer_state.json").read_text())
