"""The sweep under ``accelerate launch --num_processes N``: what every process does, and what only the main one does.

Every process runs the whole sweep, stage by stage, in the same order, with the one accelerator its owner
created (the command line, a notebook) and passed to every trainer:

- **training**: every process calls each trainer, which splits every batch across the processes
  (``dpo_teach.train.loop``; PPO splits its rollouts, ``dpo_teach.train.ppo``). A trainer given an
  accelerator never ends it, so the process group lives as long as the sweep;
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

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def state() -> PartialState:
    """This process's accelerate state (world size, rank, device), shared with the accelerators.

    ``cpu`` follows ``ACCELERATE_USE_CPU`` as ``Accelerator`` does: a ``PartialState`` created first without it
    would, on a machine without GPUs, see one process where ``accelerate launch`` started several, and every
    accelerator after it would inherit that state.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def is_main_process() -> bool:
    """Whether this process writes the sweep's files and prints its progress."""
    return state().is_main_process


def wait_for_everyone() -> None:
    """A barrier over all processes (nothing in one process)."""
    state().wait_for_everyone()


def print_main(text: str) -> None:
    """Print ``text`` (flushed) from the main process only."""
    if is_main_process():
        print(text, flush=True)
