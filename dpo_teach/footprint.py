"""What a piece of work costs where it ran: wall time, FLOPs counted by torch, peak memory and disk.

The dry run of the frontier (``dpo_teach.frontier.dry_run``) and the GPU check (``dpo_teach.gpu_check``)
measure with it; ``dpo_teach.gpus`` turns the measurements into GPU time.

- **FLOPs are counted, not estimated**: ``torch.utils.flop_counter.FlopCounterMode`` sees every matrix
  multiply and attention op that runs, forward and backward, and adds up 2 FLOPs per multiply-add (the CPU's fused
  attention kernel, which torch's table lacks, with the formula of the CUDA ones: :data:`CPU_ATTENTION`). Element-wise
  ops, softmax, layer norms and the optimizer's update are not counted (memory-bound, and together well
  under 1% of a transformer's FLOPs). Generation is counted as it runs: with the KV cache, each new token
  costs one token's forward pass. The counts are also split by model (the class name of each root module:
  ``GPT2LMHeadModel``, ``RobertaForSequenceClassification``...).
- **Peak memory**: on a CUDA device ``torch.cuda.max_memory_allocated``; on a CPU the peak resident set size of
  the process (``ru_maxrss``), which also holds Python, the libraries and the allocator's free lists. A peak is a
  property of a process, so measure one piece of work per process for its peak to be its own, and read it when
  that process ends (``wait_for_child``).
- **Disk**: bytes of the files under a directory, summed (``directory_bytes``).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode


def _cpu_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}
"""FLOP formulas for the CPU's fused attention kernel, which torch's counter does not know (it would count 0): the
formulas torch uses for the CUDA attention kernels, the same arithmetic (scores and values, forward and backward)."""


def flop_counter_mode() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the CPU's fused attention (:data:`CPU_ATTENTION`)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA's max allocated on a CUDA device, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def memory_kind(device: torch.device) -> str:
    """What :func:`peak_memory_bytes` measures on ``device``, in words."""
    return "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak resident set size (CPU RSS)"


def resident_bytes() -> int:
    """The resident set of this process now (Linux; 0 where /proc is missing)."""
    statm = Path("/proc/self/statm")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") if statm.exists() else 0


def available_memory_bytes(device: torch.device) -> int:
    """Memory a new piece of work could use: the device's total on CUDA, ``MemAvailable`` of /proc/meminfo on a
    CPU (Linux; elsewhere the physical memory)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def wait_for_child(
    process: subprocess.Popen, while_running: Callable[[], None], interval: float = 0.5
) -> tuple[int, int]:
    """Wait for ``process`` to end, calling ``while_running()`` every ``interval`` seconds until it does; returns its
    exit code and its peak resident set in bytes. The peak is the kernel's count at the child's exit (``wait4``),
    exact where a live process's own count of itself can lag by tens of megabytes."""
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            return process.returncode, usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        while_running()
        time.sleep(interval)


def directory_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (0 if it does not exist); files that vanish while walking are skipped."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


class Meter:
    """Counts FLOPs and times a block; :meth:`mark` records the running totals at points inside it.

        with Meter(device) as meter:
            train_dpo(config, ..., callbacks=[meter.callback])  # marks "step 0", "step 1", ... as they happen
        meter.flops, meter.seconds, meter.marks, meter.flops_by_model(), meter.peak_memory_bytes

    ``marks`` are ``{"label", "flops", "seconds"}`` running totals, so the work between two marks is their
    difference (a trainer's callbacks run after each optimizer step: ``step 1`` - ``step 0`` is one step).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.marks: list[dict] = []
        self.seconds = 0.0
        self._counter = flop_counter_mode()
        self._started = 0.0

    def __enter__(self) -> Meter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._counter.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exception) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._started
        self._counter.__exit__(*exception)

    @property
    def flops(self) -> int:
        """FLOPs counted so far (all of them once the block has ended)."""
        return self._counter.get_total_flops()

    def mark(self, label: str) -> None:
        """Record the FLOPs and seconds so far under ``label``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append({"label": label, "flops": self.flops, "seconds": time.perf_counter() - self._started})

    @property
    def callback(self) -> Callable[[int, torch.nn.Module], None]:
        """A trainer callback (``dpo_teach.train.run``) marking ``step N`` after optimizer step N (0: before the
        first), after the trainer's own callbacks of that step."""

        def mark_step(step: int, model: torch.nn.Module) -> None:
            self.mark(f"step {step}")

        return mark_step

    def flops_by_model(self) -> dict[str, int]:
        """FLOPs per root module class (``GPT2LMHeadModel``...); two models of one class are added together."""
        counts = self._counter.get_flop_counts()
        return {name: sum(ops.values()) for name, ops in counts.items() if name != "Global" and "." not in name}

    @property
    def peak_memory_bytes(self) -> int:
        """This process's peak memory so far (:func:`peak_memory_bytes`)."""
        return peak_memory_bytes(self.device)


class StepFlops:
    """A trainer callback counting the FLOPs of one optimizer step, ``step`` (1-based), and nothing else: it starts a
    FlopCounterMode at the callback of the step before and stops it at the step's own. Counting slows the ops it
    sees, so a caller timing a run leaves that step out of its timings."""

    def __init__(self, step: int = 1) -> None:
        self.step = step
        self.flops: int | None = None
        self._counter: FlopCounterMode | None = None

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        if step == self.step - 1:
            self._counter = flop_counter_mode()
            self._counter.__enter__()
        elif step == self.step and self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
