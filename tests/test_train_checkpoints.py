"""Checkpoints at scale: ``delete_checkpoints_at_end`` keeps a finished run's final weights only (README: disk)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2LMHeadModel

from dpo_teach.train.checkpoint import complete_checkpoints, prune_checkpoints
from dpo_teach.train.config import DPOConfig
from dpo_teach.train.dpo import train_dpo


def run(output_dir, inputs, **options):
    config = DPOConfig(
        **inputs, output_dir=str(output_dir), max_steps=4, batch_size=8, learning_rate=1e-3, optimizer="adamw",
        warmup_steps=0, eval_every=0, save_every=2, keep_checkpoints=2, max_length=32, max_prompt_length=16,
        progress_bar=False, **options,
    )  # fmt: skip
    return train_dpo(config)


def test_a_finished_run_keeps_its_final_weights_and_deletes_its_checkpoints(tmp_path, saved_run_inputs):
    kept = run(tmp_path / "kept", saved_run_inputs)
    deleted = run(tmp_path / "deleted", saved_run_inputs, delete_checkpoints_at_end=True)
    assert [path.name for path in complete_checkpoints(tmp_path / "kept")] == ["step-00000002", "step-00000004"]
    assert complete_checkpoints(tmp_path / "deleted") == []
    # the same training: the final weights, all a finished run needs, are those of the run that kept its checkpoints
    deleted_weights = GPT2LMHeadModel.from_pretrained(deleted).state_dict()
    for name, tensor in GPT2LMHeadModel.from_pretrained(kept).state_dict().items():
        torch.testing.assert_close(deleted_weights[name], tensor, atol=0, rtol=0)


@pytest.mark.parametrize(("keep", "left"), [(3, [1, 2]), (2, [1, 2]), (1, [2]), (0, [])])
def test_pruning_keeps_the_newest_and_never_more_than_exist(tmp_path, keep, left) -> None:
    for step in (1, 2):
        (tmp_path / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
    prune_checkpoints(SimpleNamespace(is_main_process=True), tmp_path, keep)
    assert [path.name for path in complete_checkpoints(tmp_path)] == [f"step-{step:08d}" for step in left]
