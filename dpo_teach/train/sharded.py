"""Run a function over every example, the processes splitting the work, and gather the results in order.

Used for the reference model's log-probs and for evaluation. Process p takes examples p, p + P,
p + 2P, ... (P processes); each result row travels with its example index, so the gathered table
is in example order whatever the split, and no example is counted twice (accelerate's
``gather_for_metrics`` would drop duplicated tail examples only for its own dataloaders).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dpo_teach.data import to_device

Batch = dict[str, torch.Tensor]


@torch.no_grad()
def map_examples(
    accelerator: Accelerator,
    examples: Sequence[dict],
    collate: Callable[[list], Batch],
    batch_size: int,
    function: Callable[[Batch], torch.Tensor],
    description: str,
    progress_bar: bool = True,
) -> torch.Tensor:
    """``function(batch) -> (b, k)`` over all N examples, in batches of ``batch_size`` per process.

    Returns ``(N, k)`` float64 on the CPU, row i belonging to ``examples[i]``, on every process.
    """
    if len(examples) < accelerator.num_processes:
        raise ValueError(
            f"{description}: {len(examples)} examples for {accelerator.num_processes} processes; need >= 1 each"
        )
    shard = list(range(accelerator.process_index, len(examples), accelerator.num_processes))
    rows = []
    show = progress_bar and accelerator.is_main_process
    for start in tqdm(range(0, len(shard), batch_size), desc=description, disable=not show, leave=False):
        indices = shard[start : start + batch_size]
        batch = to_device(collate([examples[i] for i in indices]), accelerator.device)
        values = function(batch).double()  # (b, k)
        index_column = torch.tensor(indices, dtype=torch.float64, device=values.device)[:, None]
        rows.append(torch.cat([index_column, values], dim=1))  # (b, 1 + k)
    local = torch.cat(rows)
    local = accelerator.pad_across_processes(local, dim=0, pad_index=-1)  # shards differ by at most one row
    gathered = accelerator.gather(local).cpu()
    gathered = gathered[gathered[:, 0] >= 0]
    result = torch.empty(len(examples), gathered.shape[1] - 1, dtype=torch.float64)
    result[gathered[:, 0].long()] = gathered[:, 1:]
    return result
