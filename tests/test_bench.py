"""`dpo-teach bench --quick`: every variant is timed, ratios come from the medians, all train the same model.

No assertion here depends on timing: a shared CI machine decides how fast a step is, not the code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import statistics

import pytest
import torch

from dpo_teach import bench, cli

TRL_INSTALLED = importlib.util.find_spec("trl") is not None
VARIANTS = ["online", "precomputed", "bare", *(["trl"] if TRL_INSTALLED else [])]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[int, str, dict]:
    """`dpo-teach bench --quick --out DIR`, once for the module: exit status, printed report, bench.json."""
    out = tmp_path_factory.mktemp("bench")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(["bench", "--quick", "--out", str(out)])
    return status, printed.getvalue(), json.loads((out / "bench.json").read_text())


def test_the_report_has_every_variant_and_the_machine(quick_run):
    status, printed, summary = quick_run
    assert status == 0, printed
    assert list(summary["variants"]) == VARIANTS
    for name in VARIANTS:
        assert bench.VARIANTS[name] in printed
    if not TRL_INSTALLED:
        assert "TRL DPOTrainer" in printed and "not installed" in printed
    machine = summary["machine"]
    assert machine["cores"] >= 1 and machine["device"] and machine["versions"]["torch"] in printed
    assert f"({torch.backends.cpu.get_cpu_capability()})" in printed  # the kernels' instruction set, e.g. AVX512
    assert f"{bench.QUICK['steps']} measured steps" in printed
    for ratio in summary["ratios"]:
        assert ratio in printed


def test_medians_are_positive_and_the_ratios_are_those_of_the_medians(quick_run):
    _, _, summary = quick_run
    config, variants = summary["config"], summary["variants"]
    for name, variant in variants.items():
        assert len(variant["step_ms"]) == len(variant["round_medians_ms"]) == config["rounds"]
        assert all(len(steps) == config["warmup"] + config["steps"] for steps in variant["step_ms"])
        measured = [ms for steps in variant["step_ms"] for ms in steps[config["warmup"] :]]
        assert variant["steps"] == len(measured) == config["rounds"] * config["steps"]
        assert variant["median_ms"] == pytest.approx(statistics.median(measured), rel=1e-12)
        assert variant["median_ms"] > 0, name
        assert variant["peak_mib"] >= variant["above_imports_mib"] >= 0  # a quick model can stay below the imports
        assert variant["threads"] == [config["threads"]]  # nothing in a variant changed torch's thread count
    expected = {"online/bare", "precomputed/bare"} | ({"trl/online", "trl/precomputed"} if TRL_INSTALLED else set())
    assert set(summary["ratios"]) == expected
    for ratio, value in summary["ratios"].items():
        name, base = ratio.split("/")
        assert value == pytest.approx(variants[name]["median_ms"] / variants[base]["median_ms"], rel=1e-12)
    assert summary["targets_met"]["online/bare"] == (summary["ratios"]["online/bare"] <= 1.05)
    assert summary["targets_met"]["precomputed/bare"] == (summary["ratios"]["precomputed/bare"] < 1.0)


def test_the_bare_step_and_the_trainer_train_the_same_model_on_the_same_batch(quick_run):
    """Same weights, same first batch: the same loss (ln 2, the policy is its reference), gradient norm and log-probs.

    The gradient norm and the chosen log-probs depend on every weight and on which pairs are in the batch,
    so agreement to float32 round-off (the trainer's chunked logsumexp vs a full log-softmax) rules out a
    different model, a different batch or a different loss scaling.
    """
    _, _, summary = quick_run
    bare = summary["variants"]["bare"]["first_step"]
    assert bare["loss"] == pytest.approx(math.log(2), rel=1e-6)
    for name in VARIANTS:
        first_step = summary["variants"][name]["first_step"]
        for key in ("loss", "grad_norm", "logps/chosen"):
            assert first_step[key] == pytest.approx(bare[key], rel=1e-5), (name, key)


def test_the_synthetic_pairs_are_seeded_and_differ_within_a_pair():
    assert bench.synthetic_pairs(8, seed=3) == bench.synthetic_pairs(8, seed=3)
    assert bench.synthetic_pairs(8, seed=3) != bench.synthetic_pairs(8, seed=4)
    for pair in bench.synthetic_pairs(50, seed=0):
        assert pair["chosen"] != pair["rejected"] and pair["chosen"].startswith(" ")


def test_help_gives_the_defaults_of_bench_config(capsys):
    """The CLI states the defaults without importing the bench; they must be BenchConfig's."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["bench", "--help"])
    assert stopped.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    defaults = bench.BenchConfig()
    for option in ("steps", "warmup", "batch_size", "threads", "rounds"):
        assert f"--{option.replace('_', '-')}" in printed
        assert f"(default {getattr(defaults, option)})" in printed
    assert bench.config_from_arguments(quick=True, steps=5).steps == 5
    assert bench.config_from_arguments(quick=True, steps=None).steps == bench.QUICK["steps"]
