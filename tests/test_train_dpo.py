"""The DPO trainer on a tiny GPT-2: accumulation, reference modes, step-0 rewards, learning, pitfalls."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from dpo_teach import logprobs
from dpo_teach.train import dpo as dpo_module
from dpo_teach.train.config import DPOConfig
from dpo_teach.train.dpo import train_dpo


def dpo_config(output_dir, **overrides) -> DPOConfig:
    """A few quick AdamW steps; evaluation and checkpoints every 2 steps."""
    values = dict(
        output_dir=str(output_dir), max_steps=4, batch_size=8, learning_rate=1e-3, optimizer="adamw",
        warmup_steps=1, eval_every=2, save_every=2, eval_batch_size=8, max_length=32, max_prompt_length=16,
        progress_bar=False,
    )  # fmt: skip
    values.update(overrides)
    return DPOConfig(**values)


def read_metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def train_records(output_dir) -> list[dict]:
    return [record for record in read_metrics(output_dir) if "loss" in record]


def final_weights(output_dir) -> dict[str, torch.Tensor]:
    return GPT2LMHeadModel.from_pretrained(output_dir / "final").state_dict()


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    assert first.keys() == second.keys()
    return max((first[name] - second[name]).abs().max().item() for name in first)


@pytest.fixture
def run(tmp_path, tiny_tokenizer, make_tiny_gpt2):
    """``run(name, pairs, eval_pairs=None, **config)``: train the tiny GPT-2 in ``tmp_path / name``; final weights."""

    def train(name, pairs, eval_pairs=None, **overrides) -> dict:
        output_dir = tmp_path / name
        train_dpo(dpo_config(output_dir, **overrides), make_tiny_gpt2(), tiny_tokenizer, pairs, eval_pairs)
        return final_weights(output_dir)

    return train


def test_gradient_accumulation_equals_the_large_batch(tmp_path, tiny_pairs, run, make_tiny_gpt2):
    """8 pairs in one micro-batch or in 4 micro-batches of 2: the same gradient and the same update.

    AdamW does not see a constant factor on the loss, so the gradient's norm (logged before clipping)
    is what shows a scaling error (x4 or x1/4 here); the weights then agree up to float32 summation
    order, which Adam's g / sqrt(v) amplifies to about 1e-6 after 4 steps at lr 1e-3.
    """
    one_batch = run("one", tiny_pairs)
    accumulated = run("accumulated", tiny_pairs, gradient_accumulation_steps=4)
    for first, second in zip(train_records(tmp_path / "one"), train_records(tmp_path / "accumulated"), strict=True):
        assert first["grad_norm"] == pytest.approx(second["grad_norm"], rel=1e-5)
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-6)
    assert max_difference(one_batch, accumulated) <= 1e-5
    assert max_difference(one_batch, make_tiny_gpt2().state_dict()) > 1e-4  # it did train


def test_precomputed_and_online_reference_give_the_same_loss_curve(tmp_path, tiny_pairs, run):
    eval_pairs = tiny_pairs[:8]
    run("precomputed", tiny_pairs, eval_pairs, precompute_ref=True)
    run("online", tiny_pairs, eval_pairs, precompute_ref=False)
    precomputed, online = read_metrics(tmp_path / "precomputed"), read_metrics(tmp_path / "online")
    assert [record.keys() for record in precomputed] == [record.keys() for record in online]
    for first, second in zip(precomputed, online, strict=True):
        for name in first:
            if name not in ("tokens_per_second", "step_seconds", "lr", "step"):
                # the reference's log-probs are taken in batches of different padded lengths: float32 rounding
                assert first[name] == pytest.approx(second[name], rel=1e-5, abs=1e-5), name
    assert (tmp_path / "precomputed" / "reference").is_dir()
    assert not (tmp_path / "online" / "reference").exists()


def test_rewards_are_exactly_zero_at_step_zero(tmp_path, tiny_pairs, run):
    """Policy and reference are the same weights in the same precision, eval mode, no dropout: r_hat = 0, loss ln 2."""
    eval_pairs = tiny_pairs[:8]
    run("online", tiny_pairs, eval_pairs, precompute_ref=False, max_steps=1)
    first_step = train_records(tmp_path / "online")[0]
    assert first_step["rewards/chosen"] == 0.0 and first_step["rewards/rejected"] == 0.0
    assert first_step["rewards/accuracies"] == 0.5  # every pair a tie, counted 1/2
    assert first_step["loss"] == pytest.approx(math.log(2), abs=1e-7)
    run("precomputed", tiny_pairs, eval_pairs, precompute_ref=True, max_steps=1)
    step_zero_eval = read_metrics(tmp_path / "precomputed")[0]
    assert step_zero_eval["step"] == 0
    assert step_zero_eval["eval/rewards/margins"] == 0.0  # same batches as the precompute: bit for bit
    assert step_zero_eval["eval/loss"] == pytest.approx(math.log(2), abs=1e-7)


def test_a_lower_precision_reference_is_the_pitfall_it_is_said_to_be(tmp_path, tiny_pairs, run):
    """A bfloat16 reference next to a float32 policy gives non-zero rewards before any update."""
    run("bf16", tiny_pairs, precompute_ref=False, reference_dtype="bfloat16", max_steps=1)
    first_step = train_records(tmp_path / "bf16")[0]
    # small here (a random tiny model's logits are near 0, where bfloat16 is fine-grained), but not 0
    assert first_step["rewards/chosen"] != 0.0 and first_step["rewards/rejected"] != 0.0


def test_dropout_is_disabled_so_the_policy_matches_its_reference(tmp_path, tiny_pairs, run):
    run("dropout", tiny_pairs, precompute_ref=False, disable_dropout=False, max_steps=1)
    assert train_records(tmp_path / "dropout")[0]["rewards/chosen"] != 0.0


def test_dpo_learns_the_preferences(tmp_path, tiny_pairs, run):
    """On held-out pairs of the same kind, margins and accuracy rise and chosen beats rejected."""
    run("learn", tiny_pairs[8:], tiny_pairs[:8], max_steps=20, eval_every=20, beta=0.5)
    evaluations = [record for record in read_metrics(tmp_path / "learn") if "eval/loss" in record]
    before, after = evaluations[0], evaluations[-1]
    assert after["eval/rewards/margins"] > before["eval/rewards/margins"] + 1.0
    assert after["eval/rewards/accuracies"] >= 0.9
    assert after["eval/loss"] < before["eval/loss"] - 0.2
    assert 0.0 <= min(record["rewards/accuracies"] for record in train_records(tmp_path / "learn"))
    assert max(record["rewards/accuracies"] for record in train_records(tmp_path / "learn")) <= 1.0


@pytest.mark.parametrize("loss", ["ipo", "hinge", "robust", "simpo"])
def test_every_loss_of_the_family_trains(tmp_path, tiny_pairs, loss, run, make_tiny_gpt2):
    overrides = {"robust": {"label_smoothing": 0.1}, "simpo": {"average_logps": True}}.get(loss, {})
    weights = run(loss, tiny_pairs, loss=loss, max_steps=2, **overrides)
    assert max_difference(weights, make_tiny_gpt2().state_dict()) > 1e-4
    assert all(math.isfinite(record["loss"]) for record in train_records(tmp_path / loss))


def test_the_nll_term_is_logged_and_added(tmp_path, tiny_pairs, run):
    run("rpo", tiny_pairs, nll_weight=1.0, max_steps=1, precompute_ref=False)
    first_step = train_records(tmp_path / "rpo")[0]
    # at step 0 the DPO part is ln 2 for every pair, so loss = ln 2 + mean per-token NLL of the chosen completions
    assert first_step["loss"] == pytest.approx(math.log(2) + first_step["nll"], rel=1e-6)


def test_precompute_keeps_no_reference_model(tiny_pairs, monkeypatch, run):
    """The pitfall: a precomputed reference that is still loaded. Here the initial policy itself gives the
    reference log-probs (no copy, no load), and the objective that trains holds no reference model."""
    references, objective_references = [], []
    original_reference_model, original_init = dpo_module._reference_model, dpo_module.DPOObjective.__init__

    def spy_reference_model(config, policy, device):
        reference = original_reference_model(config, policy, device)
        references.append(reference is policy)
        return reference

    def spy_init(self, config, accelerator, reference):
        objective_references.append(reference)
        original_init(self, config, accelerator, reference)

    monkeypatch.setattr(dpo_module, "_reference_model", spy_reference_model)
    monkeypatch.setattr(dpo_module, "load_causal_lm", lambda *_: pytest.fail("precompute loaded a model"))
    monkeypatch.setattr(dpo_module.DPOObjective, "__init__", spy_init)
    run("precomputed", tiny_pairs, max_steps=1)
    assert references == [True]
    assert objective_references == [None]


def test_a_separate_reference_model_is_loaded_used_and_freed(tmp_path, tiny_pairs, run, make_tiny_gpt2):
    """reference=PATH: precompute with it, then train without it; online with it gives the same curve."""
    reference_dir = tmp_path / "reference_model"
    make_tiny_gpt2(seed=1).save_pretrained(reference_dir)
    run("precomputed", tiny_pairs, reference=str(reference_dir), max_steps=2)
    run("online", tiny_pairs, reference=str(reference_dir), max_steps=2, precompute_ref=False)
    precomputed, online = train_records(tmp_path / "precomputed"), train_records(tmp_path / "online")
    assert precomputed[0]["rewards/chosen"] != 0.0  # a different model than the policy
    for first, second in zip(precomputed, online, strict=True):
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-5)


def test_a_non_finite_loss_stops_the_run_naming_the_step(
    tmp_path, tiny_pairs, monkeypatch, make_tiny_gpt2, tiny_tokenizer
):
    calls = {"count": 0}
    original = dpo_module.DPOObjective.per_pair

    def poisoned(self, model, batch):
        losses, metrics = original(self, model, batch)
        calls["count"] += 1
        return (losses * float("nan") if calls["count"] == 3 else losses), metrics

    monkeypatch.setattr(dpo_module.DPOObjective, "per_pair", poisoned)
    output_dir = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3.*Last good checkpoint: .*step-00000002"):
        train_dpo(dpo_config(output_dir, save_every=2, eval_every=0), make_tiny_gpt2(), tiny_tokenizer,
                  tiny_pairs)  # fmt: skip
    checkpoints = sorted(path.name for path in (output_dir / "checkpoints").iterdir())
    assert checkpoints == ["step-00000002"]
    assert GPT2LMHeadModel.from_pretrained(output_dir / "checkpoints" / "step-00000002" / "policy") is not None


def test_bfloat16_autocast_keeps_logits_low_and_log_probs_float32(tmp_path, tiny_pairs, run, monkeypatch):
    """Mixed precision: forward passes in bfloat16, log-probs in float32; policy and reference in the same
    autocast, so the rewards are exactly 0 before the first update."""
    logits_dtypes = []
    original = logprobs.sequence_logps

    def spy(logits, labels, average=False):
        logits_dtypes.append(logits.dtype)
        return original(logits, labels, average)

    monkeypatch.setattr(logprobs, "sequence_logps", spy)
    run("bfloat16", tiny_pairs, precompute_ref=False, mixed_precision="bf16", max_steps=2)
    # the policy's and the reference's logits stay bfloat16 (no float32 copy); log-probs are float32
    assert set(logits_dtypes) == {torch.bfloat16}
    first_step, second_step = train_records(tmp_path / "bfloat16")
    assert first_step["rewards/chosen"] == 0.0 and first_step["rewards/rejected"] == 0.0
    assert first_step["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert second_step["rewards/margins"] != 0.0 and math.isfinite(second_step["loss"])


def test_another_precision_in_the_same_process_is_refused_with_the_fix(tmp_path, tiny_pairs, run):
    """accelerate keeps one precision per process; the trainers do not reset its state behind the caller's back
    (that would pull it from under an accelerator the caller still uses), so a second precision is an error that
    says what to do."""
    run("float32", tiny_pairs, max_steps=1)
    with pytest.raises(ValueError, match=r"mixed_precision: this process already trains with 'no'.*restart"):
        run("bfloat16", tiny_pairs, mixed_precision="bf16", max_steps=1)


def test_metrics_reach_accelerate_trackers(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    """What goes to metrics.jsonl also goes to every tracker (TensorBoard, W&B, ...) through accelerator.log."""
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class RecordingTracker(GeneralTracker):
        name, requires_logging_directory, main_process_only = "recording", False, True

        def __init__(self):
            super().__init__()
            self.logged = []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.configuration = values

        def log(self, values, step, **kwargs):
            self.logged.append({"step": step, **values})

    tracker = RecordingTracker()
    accelerator = Accelerator(log_with=[tracker], step_scheduler_with_optimizer=False)
    config = dpo_config(tmp_path / "tracked", max_steps=2, eval_every=2)
    train_dpo(config, make_tiny_gpt2(), tiny_tokenizer, tiny_pairs[8:], tiny_pairs[:8], accelerator=accelerator)
    assert tracker.configuration["beta"] == config.beta
    assert tracker.logged == read_metrics(tmp_path / "tracked")


def test_a_tracker_that_is_not_installed_is_an_error(tmp_path):
    from dpo_teach.train.run import make_accelerator

    with pytest.raises(ValueError, match=r"log_with: \['tensorboard'\] requested but not installed"):
        make_accelerator("no", ["tensorboard"], str(tmp_path))


def test_every_logged_metric_is_documented(tmp_path, tiny_pairs, run):
    documented = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    run("documented", tiny_pairs[8:], tiny_pairs[:8], nll_weight=0.5, max_steps=2)
    names = {name for record in read_metrics(tmp_path / "documented") for name in record} - {"step"}
    for name in names:
        assert f"`{name.removeprefix('eval/')}`" in documented, name


def test_resuming_with_other_settings_is_refused(tmp_path, tiny_pairs, run):
    """A run that would continue a checkpoint of different training names the fields that differ; fields that do
    not change the updates (max_steps, evaluation, saving) may change, which is how a finished run is extended."""
    run("run", tiny_pairs, max_steps=2, save_every=2)
    with pytest.raises(ValueError, match=r"step-00000002 was written by a run with other settings \(beta: 0.1 -> 0.5"):
        run("run", tiny_pairs, max_steps=4, save_every=2, beta=0.5)
    run("run", tiny_pairs, max_steps=4, save_every=2, eval_every=0)  # extends the run from step 2
    assert [record["step"] for record in train_records(tmp_path / "run")] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="resume: false, but .* holds checkpoints of an earlier run"):
        run("run", tiny_pairs, max_steps=4, resume=False)


def test_simpo_runs_without_any_reference(tiny_pairs, monkeypatch, run):
    """SimPO is reference-free: no reference pass, no reference model; and it is defined on per-token means."""
    monkeypatch.setattr(dpo_module, "_reference_model", lambda *_: pytest.fail("SimPO built a reference"))
    monkeypatch.setattr(dpo_module, "reference_logps", lambda *_, **__: pytest.fail("SimPO ran a reference pass"))
    run("simpo", tiny_pairs, loss="simpo", average_logps=True, max_steps=2, precompute_ref=True)
    with pytest.raises(ValueError, match="average_logps: must be true for loss='simpo'"):
        DPOConfig(loss="simpo")
