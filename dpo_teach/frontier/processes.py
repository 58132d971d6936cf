"""The sweep under ``accelerate launch --num_processes N``: what every process does, and what only the main one does.

Every process runs the whole sweep, stage by stage, in the same order:

- **training**: every process calls each trainer, which splits every batch across the processes
  (``dpo_teach.train.loop``; PPO splits its rollouts, ``dpo_teach.train.ppo``);
- **sampling** (the preference pairs, every evaluation): every process samples all the prompts. Sampling
  is seeded and the weights are the same in every process, so each draws the same samples as one process
  would. The work is redundant (N devices do what one does), in exchange for simplicity: the results do not
  depend on N, and no process idles at a barrier through a whole sampling pass (a barrier times out, after
  30 min under gloo and 10 under NCCL by default). Sharding the prompts would divide the sampling time by N,
  but ``sample`` seeds each batch by its position, so shards would need a seed offset to reproduce one run;
- **files** outside the trainers (stage records, the tokenizer, the pairs, evaluation rows and samples,
  results.csv, the figure, run.json) are written by the main process only, followed by :func:`wait_for_everyone`;
  the other processes read them after it. Every process therefore returns the same rows, the main one's;
- **printing** is the main process's.

In a single plain process (no ``accelerate launch``) the same code runs and every barrier is a no-op.
"""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def state() -> PartialState:
    """This process's accelerate state (world size, rank, device), shared with the trainers' accelerators.

    ``cpu`` follows ``ACCELERATE_USE_CPU`` as ``Accelerator`` does: a ``PartialState`` created first without it
    would, on a machine without GPUs, see one process where ``accelerate launch`` started several, and every
    trainer after it would inherit that state.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    """Whether this process writes the sweep's files and prints its progress."""
    return state().is_main_process


_groups_recreated = 0
"""How many times this process has re-created the process group. Every process runs the same sweep, so every
process counts the same, and the count names a fresh key space in the launcher's store."""


def _recreate_process_group(backend: str) -> None:
    """Join the processes in a new default process group, after a trainer destroyed the last one.

    The rendezvous is the launcher's (``env://``: the store of ``accelerate launch`` / torchrun), under a prefix
    of its own: the destroyed group's keys are still in that store, and gloo would read the dead group's
    addresses from them ("Connection refused").
    """
    global _groups_recreated
    _groups_recreated += 1
    store, rank, world_size = next(torch.distributed.rendezvous("env://"))
    store = torch.distributed.PrefixStore(f"dpo_teach.frontier/group-{_groups_recreated}", store)
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size)


def wait_for_everyone() -> None:
    """A barrier over all processes (nothing in one process); first re-creates the process group if it is gone.

    Every trainer ends with ``accelerator.end_training()``, which destroys the default process group, while the
    state (world size, rank, backend) outlives it (``make_accelerator`` keeps ``PartialState``), so the group is
    created again here. The sweep passes a barrier after every trainer call (the stage's ``finish`` or the
    evaluation that follows), so the next trainer's DDP finds the group too.
    """
    current = state()
    if current.use_distributed and not torch.distributed.is_initialized():
        _recreate_process_group(current.backend)
    current.wait_for_everyone()


def print_main(text: str) -> None:
    """Print ``text`` (flushed) from the main process only."""
    if is_main_process():
        print(text, flush=True)
