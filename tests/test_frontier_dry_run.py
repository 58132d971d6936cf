"""`dpo-teach frontier --dry-run`: the plan keeps the preset's shapes, the stand-ins have the Hub models' sizes, and
the whole dry run (every stage in its own process, the PPO extrapolation, the bill) runs here on the paper preset's
code path with small stand-ins, its FLOPs checked against a hand count."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

from dpo_teach import cli, gpus
from dpo_teach.frontier import dry_run as dry_run_module
from dpo_teach.frontier.dry_run import DryRunConfig, make_plan, run_dry_run, stage_names
from dpo_teach.frontier.dry_run_report import format_measured, format_report
from dpo_teach.frontier.presets import preset
from dpo_teach.frontier.standins import CLASSIFIER_ARCHITECTURES, POLICY_ARCHITECTURES

GIB = 2**30
POLICY = {"vocab_size": 1024, "n_positions": 1024, "n_embd": 32, "n_layer": 4, "n_head": 2}
CLASSIFIER = CLASSIFIER_ARCHITECTURES["siebert/sentiment-roberta-large-english"] | {
    "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
}  # fmt: skip
SMALL = DryRunConfig(stand_in_policy=POLICY, stand_in_classifier=CLASSIFIER, ppo_layers=(1, 2))
"""The paper preset's dry run with small stand-ins, PPO at 1 and 2 layers extrapolated to 4."""


def test_the_stand_ins_have_the_hub_models_parameter_counts():
    """The architectures written in the code give the parameter counts of the Hub checkpoints (model cards)."""
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(**architecture)).parameters())
                  for name, architecture in POLICY_ARCHITECTURES.items()}  # fmt: skip
        classifier = RobertaForSequenceClassification(
            RobertaConfig(**CLASSIFIER_ARCHITECTURES["siebert/sentiment-roberta-large-english"])
        )
    assert counts == {"gpt2": 124_439_808, "gpt2-large": 774_030_080}
    assert sum(p.numel() for p in classifier.parameters()) == 355_361_794


def test_the_plan_keeps_the_paper_presets_shapes(tmp_path, monkeypatch):
    monkeypatch.setattr(dry_run_module, "available_memory_bytes", lambda device: 24 * GIB)
    paper = preset("paper")
    plan = make_plan(paper, DryRunConfig(), tmp_path, "cpu")
    config = plan.config
    assert (config.sft.batch_size, config.sft.gradient_accumulation_steps, config.sft.max_length) == (4, 4, 512)
    assert (config.dpo.batch_size, config.dpo.gradient_accumulation_steps) == (64, 8)  # paper App. B: 64 pairs
    assert (config.reward_model.batch_size, config.reward_model.keep_best) == (64, False)
    assert (config.ppo.batch_size, config.ppo.ppo_epochs, config.ppo.num_minibatches) == (64, 4, 4)
    assert config.sampling == paper.sampling and config.samples_per_prompt == 4
    assert config.mixed_precision == "no"  # float32 on a CPU
    assert config.model == str(tmp_path / "stand-ins" / "policy") and config.corpus.endswith("imdb")
    assert plan.policy_parameters == 774_030_080 and plan.ppo_layers == [4, 8]  # 28 GB of PPO state > 24 GiB
    monkeypatch.setattr(dry_run_module, "available_memory_bytes", lambda device: 80 * GIB)
    assert make_plan(paper, DryRunConfig(), tmp_path, "cpu").ppo_layers == [36]
    tiny = make_plan(preset("tiny"), DryRunConfig(), tmp_path, "cpu")
    assert tiny.config.model == "" and not tiny.stand_ins and tiny.ppo_layers == [4]
    assert [name for name, _ in stage_names(tiny)] == ["sft", "pairs", "reward-model", "dpo", "ppo", "evaluation"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry-run")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_dry_run(preset("paper"), out, SMALL)
    return result, out, printed.getvalue()


def test_every_stage_ran_and_was_measured(report):
    result, out, printed = report
    stages = result["stages"]
    assert list(stages) == ["stand-ins", "sft", "pairs", "reward-model", "dpo", "ppo-1-layers", "ppo-2-layers",
                            "evaluation", "ppo"]  # fmt: skip
    for name in ("sft", "pairs", "reward-model", "dpo", "ppo-1-layers", "ppo-2-layers", "evaluation"):
        stage = stages[name]
        assert stage["flops"] > 0 and stage["seconds"] > 0, name
        assert stage["peak_memory_bytes"] > stage["resident_before_bytes"], name  # the work itself needed memory
        assert f"{name}: running" in printed
    pairs = stages["pairs"]
    assert pairs["flops_by_model"].keys() == {"GPT2LMHeadModel", "RobertaForSequenceClassification"}
    assert pairs["samples"] == 16 * 4 and pairs["train_pairs"] >= 64  # enough for DPO's batch of 64
    dpo = stages["dpo"]
    reference = next(mark["flops"] for mark in dpo["marks"] if mark["label"] == "step 0")
    assert 0 < reference < dpo["flops"]  # the reference pass, then the step
    assert len(dpo["steps"]) == 1 and len(stages["sft"]["steps"]) == 1
    # every trainer ran with the sweep's checkpoint settings: final weights kept, the checkpoint deleted at the end
    for name in ("sft", "reward-model", "dpo"):
        assert stages[name]["disk_peak_bytes"] >= stages[name]["disk_kept_bytes"] > 0, name
    assert list(out.glob("**/final/model.safetensors")) and not list(out.glob("**/checkpoints/step-*"))
    assert json.loads((out / "dry_run.json").read_text())["bill"]["total_flops"] == result["bill"]["total_flops"]


def test_the_counted_sft_flops_match_a_hand_count(report):
    """4 rows of 512 tokens, forward and backward. Per token and layer the projections cost 24 d^2 forward (qkv 6 d^2,
    output 2 d^2, MLP 16 d^2) and the tied LM head 2 d V, each three times that with the backward (two multiplies per
    multiply); attention costs 4 T^2 d forward (scores and values) and 10 T^2 d backward (torch's formula, which
    recomputes the scores), over the whole row."""
    result, _, _ = report
    d, layers, vocab, tokens, rows = POLICY["n_embd"], POLICY["n_layer"], POLICY["vocab_size"], 512, 4
    projections = 3 * (layers * 24 * d**2 * tokens + 2 * d * vocab * tokens)
    attention = layers * (4 + 10) * tokens**2 * d
    assert result["stages"]["sft"]["flops"] == rows * (projections + attention)


def test_ppo_is_extrapolated_linearly_in_depth(report):
    result, _, _ = report
    one, two, full = (result["stages"][name] for name in ("ppo-1-layers", "ppo-2-layers", "ppo"))
    assert full["extrapolated_from_layers"] == [1, 2] and full["layers"] == 4
    assert full["parameters"] == result["plan"]["policy_parameters"]  # parameters are exactly linear in depth
    assert full["flops"] == pytest.approx(one["flops"] + 3 * (two["flops"] - one["flops"]))
    assert two["flops"] > one["flops"]
    # wall time follows the machine's load, not only the depth: not extrapolated, printed as '-'
    assert full["seconds"] is None and result["bill"]["units"]["ppo_step"]["seconds"] is None
    row = next(line for line in format_measured(result).splitlines() if line.startswith("ppo (4 layers)"))
    assert row.split()[3] == "-", row


def test_the_bill_prices_the_whole_sweep(report):
    result, _, printed = report
    bill, units, config = result["bill"], result["bill"]["units"], preset("paper")
    rows = {row["stage"]: row for row in bill["rows"]}
    assert list(rows) == ["SFT", "pairs", "reward model", "reference log-probs", "DPO", "Preferred-FT",
                          "Unlikelihood", "PPO-RM", "PPO-GT", "evaluations", "best-of-N"]  # fmt: skip
    assert bill["total_flops"] == pytest.approx(sum(row["flops"] for row in bill["rows"]))
    dpo_steps = len(config.dpo_betas) * config.dpo.max_steps
    assert rows["DPO"]["flops"] > dpo_steps * units["dpo_step"]["flops"]  # plus the held-out evaluations
    assert rows["PPO-RM"]["flops"] == pytest.approx(len(config.ppo_target_kls) * 1000 * units["ppo_step"]["flops"])
    a100 = gpus.GPUS["A100"]
    assert rows["DPO"]["hours"]["A100"] == pytest.approx(rows["DPO"]["flops"] / (a100.bf16_flops * gpus.MFU) / 3600)
    evaluations = 1 + 17 * 10  # the SFT policy, then 17 runs evaluated every 100 of 1,000 steps
    assert rows["evaluations"]["flops"] == pytest.approx(evaluations * 1000 * units["eval_prompt"]["flops"])
    per_sample = units["pair_prompt"]["flops"] / 4  # best-of-N: 16 samples for each of 1,000 prompts, once
    assert rows["best-of-N"]["flops"] == pytest.approx(16 * 1000 * per_sample)
    floor = math.ceil(25_000 * 4 / 64) * 48 * 4 * result["plan"]["policy_parameters"] / a100.bandwidth / 3600
    assert rows["pairs"]["hours"]["A100"] >= rows["pairs"]["sampling_floor_hours"]["A100"] == pytest.approx(floor)
    assert all(row["fits_80gb"] for row in bill["rows"])  # small stand-ins fit anything
    disk = bill["disk"]
    assert disk["budget_bytes"] == disk["total_kept_bytes"] + 2 * max(disk["checkpoint_bytes"].values())
    text = format_report(result)
    for name in ("sft", "ppo (4 layers)", "PPO-GT", "fits one 80 GB GPU", "extrapolated", "disk of the sweep"):
        assert name in text


def test_a_second_run_keeps_the_measured_stages_and_the_command_prints_the_bill(report, monkeypatch):
    result, out, _ = report
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        again = run_dry_run(preset("paper"), out, SMALL)
    assert printed.getvalue().count("measured before, kept") == 8
    assert again["stages"]["dpo"]["flops"] == result["stages"]["dpo"]["flops"]
    monkeypatch.setattr(dry_run_module, "run_dry_run", lambda config, out: result)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["frontier", "--preset", "paper", "--dry-run", "--out", str(out)]) == 0
    assert "GPU bill of the whole paper sweep" in printed.getvalue() and "dry_run.json" in printed.getvalue()
    with pytest.raises(SystemExit, match="drop --quick"):
        cli.main(["frontier", "--dry-run", "--quick"])
