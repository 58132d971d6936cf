"""GPUs by their datasheets, and the time a counted number of FLOPs takes on one at a stated utilization.

Nothing here is measured: a datasheet's dense bf16 peak times a model FLOPs utilization (MFU) is an
assumption, and every figure computed from it is an extrapolation. 40% MFU is a common figure for a
well-fed transformer training step on these GPUs; generation (sampling) is bound by reading the weights
once per new token rather than by FLOPs, so :func:`sampling_floor_seconds` gives that bound next to it.
Framework overhead (Python, kernel launches) comes on top of both; ``dpo-teach gpu-check`` measures a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
MFU = 0.40
"""Assumed model FLOPs utilization, unless a GPU has measured one (``dpo-teach gpu-check`` reports it)."""
HEADROOM = 0.9
"""A peak fits a GPU when it is at most this share of its memory: the rest is the CUDA context and the
allocator's fragmentation."""


@dataclass(frozen=True)
class GPU:
    """One GPU model as its datasheet gives it."""

    name: str
    bf16_flops: float
    """Dense (no sparsity) bf16 tensor-core peak, FLOP/s."""
    memory_bytes: int
    """Device memory."""
    bandwidth: float
    """Memory bandwidth, bytes/s."""
    source: str
    """Where the figures come from."""


GPUS = {
    "A100": GPU(
        "A100 SXM4 80GB", 312e12, 80 * GIB, 2.039e12,
        "NVIDIA A100 Tensor Core GPU datasheet: 312 TFLOPS bf16 dense, 80 GB HBM2e at 2,039 GB/s",
    ),
    "H100": GPU(
        "H100 SXM5 80GB", 989e12, 80 * GIB, 3.35e12,
        "NVIDIA H100 Tensor Core GPU datasheet: 1,979 TFLOPS bf16 with sparsity (989 dense), 80 GB HBM3 at 3.35 TB/s",
    ),
}  # fmt: skip


def find_gpu(device_name: str) -> GPU | None:
    """The datasheet entry of a CUDA device by its name (``torch.cuda.get_device_name()``), or None if unknown."""
    for key, gpu in GPUS.items():
        if key in device_name:
            return gpu
    return None


def compute_seconds(flops: float, gpu: GPU, mfu: float = MFU) -> float:
    """Seconds ``flops`` take on ``gpu`` at ``mfu`` of its bf16 peak (an extrapolation, not a measurement)."""
    return flops / (gpu.bf16_flops * mfu)


def sampling_floor_seconds(weight_bytes: float, token_steps: float, gpu: GPU) -> float:
    """A lower bound on generation time: every new token of a batch reads the model's weights once, so
    ``token_steps`` steps (batches x new tokens) take at least ``token_steps * weight_bytes / bandwidth``."""
    return token_steps * weight_bytes / gpu.bandwidth


def fits(peak_bytes: float, gpu: GPU) -> bool:
    """Whether a measured or extrapolated peak fits ``gpu``'s memory with :data:`HEADROOM`."""
    return peak_bytes <= HEADROOM * gpu.memory_bytes
