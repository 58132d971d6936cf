"""`dpo-teach gpu-check` (make gpu-check): without a GPU it says so and measures nothing; its CPU path at tiny size
runs every part (the bench in bf16, the paper preset's DPO steps, sampling) and writes the JSON a script compares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dpo_teach import cli, gpu_check


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["gpu-check", "--out", str(tmp_path)]) == 0
    assert "no CUDA GPU on this machine; nothing was measured" in capsys.readouterr().out
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; a GPU machine runs `make gpu-check` itself")
def test_the_cpu_path_at_tiny_size(tmp_path, capsys):
    assert cli.main(["gpu-check", "--size", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    size = gpu_check.SIZES["tiny"]
    dpo, bench = report["dpo"], report["bench"]
    assert dpo["steps"] == size.dpo_steps and dpo["timed_steps"] == size.dpo_steps - size.warmup
    assert dpo["batch_pairs"] == size.dpo_batch_size and dpo["first_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert dpo["mfu"] is None and dpo["flops_per_step"] > 0 and dpo["peak_memory_bytes"] > 0  # no CPU datasheet
    # the counted FLOPs of a step: at least 6 per parameter per token of the policy's transformer blocks
    block = 12 * size.policy["n_embd"] ** 2 * size.policy["n_layer"]
    assert dpo["flops_per_token"] >= 6 * block
    assert report["sampling"]["sequences"] == 64 and report["sampling"]["ms_per_token_step"] > 0
    # the bench ran in bf16 and its variants trained the same model: equal first losses, log-probs within bf16's
    assert bench["config"]["mixed_precision"] == "bf16" and "bf16 autocast" in printed
    first = {name: variant["first_step"] for name, variant in bench["variants"].items()}
    for name, step in first.items():
        assert step["loss"] == pytest.approx(math.log(2), abs=1e-6), name
        assert step["logps/chosen"] == pytest.approx(first["bare"]["logps/chosen"], rel=2e-2), name
    assert set(report["metrics"]) >= {"dpo_ms_per_step", "dpo_tokens_per_second", "dpo_mfu", "dpo_peak_memory_gib"}
    assert "MFU n/a" in printed and "gpu_check.json" in printed


def test_make_gpu_check_exists_and_is_documented():
    root = Path(__file__).resolve().parent.parent
    assert "\ngpu-check:" in (root / "Makefile").read_text()
    assert "make gpu-check" in (root / "README.md").read_text()
