"""The reference model's log-probs: precomputed once and cached on disk, or computed online.

Precomputed (the default): before the first step, one pass of the reference over every training and
held-out pair, in eval mode and under the same autocast as the policy, gives log pi_ref(y_w | x) and
log pi_ref(y_l | x) per example. They are cached as ``OUTPUT/reference/<key>.pt``, keyed by a hash
of the reference's weights, of the tokenized data and of the precision, so a resumed run or a
second run with the same model and data reads them back. When the reference is the initial policy
(the paper's setup) no second model is ever built; otherwise it is loaded, used and freed before
training starts.

Online: a frozen copy of the reference runs next to the policy on every batch. It costs a second
model in memory and a second forward per step, and gives the same numbers (tested).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import Accelerator

from dpo_teach import io
from dpo_teach.logprobs import concatenated_logps
from dpo_teach.train.fingerprint import data_fingerprint, model_fingerprint
from dpo_teach.train.sharded import map_examples


def reference_logps(
    accelerator: Accelerator,
    reference: torch.nn.Module,
    examples: Sequence[dict],
    collate: Callable[[list], dict],
    batch_size: int,
    average: bool,
    cache_dir: Path,
    description: str,
    progress_bar: bool = True,
) -> torch.Tensor:
    """log pi_ref of every example's chosen and rejected completion, ``(N, 2)`` float32 on the CPU.

    Read from ``cache_dir`` when the same weights, data and precision were seen before; otherwise
    computed (``reference`` in eval mode, the processes splitting the examples) and cached.
    """
    key = hashlib.sha256(
        f"{model_fingerprint(reference)}|{data_fingerprint(examples)}|average={average}|"
        f"precision={accelerator.mixed_precision}".encode()
    ).hexdigest()[:24]
    path = cache_dir / f"{key}.pt"
    if path.exists():
        return torch.load(path)
    was_training = reference.training
    reference.eval()

    def chosen_and_rejected(batch: dict) -> torch.Tensor:
        with accelerator.autocast():
            logps = concatenated_logps(reference, batch, average=average)
        return torch.stack([logps.chosen, logps.rejected], dim=1)  # (b, 2)

    result = map_examples(accelerator, examples, collate, batch_size, chosen_and_rejected, description, progress_bar)
    result = result.float()
    reference.train(was_training)
    if accelerator.is_main_process:
        io.write_atomically(path, lambda temporary: torch.save(result, temporary))  # never a half-written cache
    accelerator.wait_for_everyone()
    return result
