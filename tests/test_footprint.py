"""The measurements of dpo_teach.footprint against hand counts, and the GPU arithmetic of dpo_teach.gpus."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dpo_teach import gpus
from dpo_teach.footprint import Meter, StepFlops, directory_bytes, wait_for_child


class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(8, 16, bias=False), torch.nn.Linear(16, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def test_the_meter_counts_two_flops_per_multiply_add_forward_and_backward():
    model, x = TwoLayers(), torch.randn(5, 8)
    forward = 2 * 5 * (8 * 16 + 16 * 4)  # (5, 8) @ (8, 16) and (5, 16) @ (16, 4)
    with Meter() as meter:
        model(x).sum().backward()
        meter.mark("after one step")
        with torch.no_grad():
            model(x)
    # backward: the weight gradients of both layers and the input gradient of the second (the input needs none)
    backward = 2 * 5 * (8 * 16 + 16 * 4) + 2 * 5 * 16 * 4
    assert meter.marks[0]["flops"] == forward + backward
    assert meter.flops == 2 * forward + backward
    assert meter.flops_by_model() == {"TwoLayers": meter.flops}
    assert meter.seconds >= meter.marks[0]["seconds"] > 0


def test_step_flops_counts_the_one_step_between_two_callbacks():
    model, x = TwoLayers(), torch.randn(5, 8)
    counted = StepFlops(step=2)
    for step in range(4):  # callbacks after steps 0 (start), 1, 2, 3; a "step" is one forward and backward
        counted(step, model)
        model(x * (step + 1)).sum().backward()
    with Meter() as meter:
        model(x).sum().backward()
    assert counted.flops == meter.flops  # step 2 only: the work between the callbacks of steps 1 and 2


def test_disk_and_memory(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "weights.bin").write_bytes(b"x" * 1000)
    (tmp_path / "b.json").write_text("{}")
    assert directory_bytes(tmp_path) == 1002 and directory_bytes(tmp_path / "missing") == 0
    # a peak belongs to a process: read at a fresh one's exit, 200 MB written (so resident) are in it
    script = "import torch; block = torch.ones(50_000_000)"
    child = subprocess.Popen([sys.executable, "-c", script])
    calls = []
    status, peak = wait_for_child(child, lambda: calls.append(1), interval=0.05)
    assert status == 0 and child.returncode == 0 and calls
    assert 200e6 <= peak < 2e9


def test_gpu_time_is_flops_over_the_peak_at_the_stated_utilization():
    a100 = gpus.GPUS["A100"]
    assert gpus.compute_seconds(312e12 * 0.4 * 3600, a100) == pytest.approx(3600)  # an hour of 40% of 312 TFLOP/s
    assert gpus.compute_seconds(1e15, gpus.GPUS["H100"], mfu=0.5) == pytest.approx(1e15 / (989e12 * 0.5))
    # a 774M-parameter model in float32, 48 tokens: 48 reads of 3.1 GB at 2,039 GB/s
    assert gpus.sampling_floor_seconds(4 * 774e6, 48, a100) == pytest.approx(48 * 4 * 774e6 / 2.039e12)
    assert gpus.fits(70 * 2**30, a100) and not gpus.fits(75 * 2**30, a100)  # 90% of 80 GiB is 72 GiB
    assert gpus.find_gpu("NVIDIA A100-SXM4-80GB") is a100 and gpus.find_gpu("Tesla T4") is None


def test_attention_is_counted_on_the_cpu_in_training_too():
    """With gradients, the CPU runs attention as one fused kernel that torch's counter does not know: its FLOPs are
    counted as the math path's two batched multiplies forward (4 T^2 d) and their backward (twice that, plus the
    recomputed scores: 10 T^2 d in torch's formula)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=256, attn_pdrop=0.0))
    tokens = torch.randint(0, 64, (1, 256))
    with Meter() as with_grad:
        model(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits.sum().backward()
    projections = 3 * (2 * 256 * (12 * 32**2 + 32 * 64))  # forward and backward of the linear layers and LM head
    assert with_grad.flops == projections + (4 + 10) * 256**2 * 32
