"""The sentiment task end to end at toy size: every stage runs, is reused, is redone when its inputs change,
and the Hub presets' code path (pretrained model, IMDb-format dataset, classifier reward) runs on local copies."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dpo_teach.errors import ResumeError
from dpo_teach.frontier import methods as methods_module
from dpo_teach.frontier import task as task_module
from dpo_teach.frontier.methods import Method, sweep_methods
from dpo_teach.frontier.presets import preset
from dpo_teach.frontier.stage import replacing
from dpo_teach.frontier.sweep import train_method
from dpo_teach.frontier.task import SentimentTask
from dpo_teach.sentiment.models import TinyGPT2

TRAINING = [(task_module, "train_sft"), (methods_module, "train_dpo"), (task_module, "sample"),
            (task_module, "train_tokenizer")]  # fmt: skip


def toy(config):
    """Shrink every stage of a preset to seconds."""
    config.num_train_reviews, config.num_test_reviews, config.vocab_size = 300, 60, 400
    config.shape = TinyGPT2(n_layer=1, n_embd=32, n_head=2, n_positions=64)
    config.sft = dataclasses.replace(
        config.sft, max_steps=30, batch_size=8, eval_every=15, save_every=15, eval_batch_size=16, max_length=64,
        max_prompt_length=32, mixed_precision="no",
    )  # fmt: skip
    config.sft_eval_reviews, config.num_pair_prompts, config.num_eval_prompts = 16, 24, 8
    config.classifier = dataclasses.replace(
        config.classifier, max_steps=10, batch_size=16, eval_every=10, save_every=10, eval_batch_size=32,
        max_length=64, mixed_precision="no",
    )  # fmt: skip
    config.classifier_shape = dataclasses.replace(config.classifier_shape, dim=16, n_layers=1, n_heads=2,
                                                  hidden_dim=32, max_position_embeddings=64)  # fmt: skip
    config.classifier_eval_reviews, config.best_of_n, config.pair_epochs = 20, (2, 4), None
    config.sampling = dataclasses.replace(config.sampling, max_new_tokens=10, batch_size=32)
    config.dpo = dataclasses.replace(config.dpo, max_steps=3, batch_size=2, eval_every=3, save_every=3,
                                     eval_batch_size=8, max_length=32, max_prompt_length=12, optimizer="adamw",
                                     learning_rate=1e-3, warmup_steps=0, mixed_precision="no")  # fmt: skip
    for name in ("preferred_ft", "unlikelihood", "reward_model", "ppo"):  # one accelerator: one precision, the CPU's
        setattr(config, name, dataclasses.replace(getattr(config, name), mixed_precision="no"))
    return config


def run_all(task: SentimentTask):
    train_path, eval_path = task.preference_pairs()
    dpo_dir, _ = train_method(task, Method("dpo", "beta", 0.5))  # the frontier's own DPO run
    return train_path, eval_path, dpo_dir, task.evaluate(dpo_dir)


def test_the_tiny_pipeline_runs_caches_and_invalidates(tmp_path, monkeypatch):
    config = toy(preset("tiny"))
    train_path, eval_path, dpo_dir, evaluation = run_all(SentimentTask(config, tmp_path, progress_bar=False))
    assert (dpo_dir / "model.safetensors").exists()
    summary = json.loads((train_path.parent / "summary.json").read_text())
    assert summary["pairs"] + summary["ties_dropped"] == 24 * 6  # every pair of 4 samples is labelled or a tie
    pairs = [json.loads(line) for line in train_path.read_text().splitlines()]
    assert pairs and all(pair["chosen_reward"] > pair["rejected_reward"] for pair in pairs)
    held_out = {json.loads(line)["prompt"] for line in eval_path.read_text().splitlines()}
    assert held_out.isdisjoint({pair["prompt"] for pair in pairs})
    assert evaluation.num_samples == 8 and 0.0 <= evaluation.mean_reward <= 1.0 and evaluation.kl >= 0.0

    # a second task over the same run directory reuses every stage
    for module, name in TRAINING:
        monkeypatch.setattr(module, name, lambda *args, name=name, **kwargs: pytest.fail(f"{name} ran again"))
    assert run_all(SentimentTask(config, tmp_path, progress_bar=False))[:3] == (train_path, eval_path, dpo_dir)

    # with --replace, a changed SFT config redoes SFT and everything downstream of it, and only that
    monkeypatch.undo()
    changed = toy(preset("tiny"))
    changed.sft = dataclasses.replace(changed.sft, max_steps=31)
    ran = []

    def recording(name, original):
        def record(*args, **kwargs):
            ran.append(name)
            return original(*args, **kwargs)

        return record

    for module, name in TRAINING:
        monkeypatch.setattr(module, name, recording(name, getattr(module, name)))
    with pytest.raises(ResumeError, match=r"sft holds a finished stage of other settings \(sft\.max_steps: 30 -> 31\)"):
        run_all(SentimentTask(changed, tmp_path, progress_bar=False))  # refused: nothing runs (tests/test_faults.py)
    assert ran == []
    with replacing():
        run_all(SentimentTask(changed, tmp_path, progress_bar=False))
    assert ran == ["train_sft", "sample", "train_dpo"]


def test_the_hub_code_path_runs_on_local_copies(
    tmp_path, saved_run_inputs, tiny_classifier_dir, tiny_tokenizer, make_tiny_gpt2
):
    """The gpt2 / paper presets' path: a pretrained model and tokenizer by path, an IMDb-format DatasetDict,
    a sequence-classifier reward by path. Nothing here is specific to a test: only the names point locally."""
    import datasets

    reviews = [
        f"The film number {index} was {'great fun' if index % 2 else 'a dull mess'} overall." for index in range(80)
    ]
    splits = {"train": reviews[:60], "test": reviews[60:]}
    imdb = tmp_path / "imdb"
    datasets.DatasetDict(
        {split: datasets.Dataset.from_dict({"text": texts, "label": [index % 2 for index in range(len(texts))]})
         for split, texts in splits.items()}
    ).save_to_disk(str(imdb))  # fmt: skip
    config = toy(preset("gpt2"))
    config.corpus, config.model, config.reward = str(imdb), saved_run_inputs["model"], tiny_classifier_dir
    config.num_pair_prompts, config.num_eval_prompts = 12, 6
    _, _, dpo_dir, evaluation = run_all(SentimentTask(config, tmp_path / "run", progress_bar=False))
    assert (dpo_dir / "model.safetensors").exists()
    assert not (tmp_path / "run" / "tokenizer").exists()  # the pretrained model's tokenizer, not a trained one
    assert evaluation.num_samples == 6 and 0.0 <= evaluation.mean_reward <= 1.0


def test_an_interrupted_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """SFT stopped at step 20 (checkpoints every 15): the next call resumes at step 15 instead of starting over."""
    from dpo_teach.train import sft as sft_module

    config = toy(preset("tiny"))
    original, calls = sft_module.SFTObjective.__call__, []

    def interrupted(self, model, batch):
        calls.append(1)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(sft_module.SFTObjective, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SentimentTask(config, tmp_path, progress_bar=False).sft_policy()
    monkeypatch.undo()
    final = SentimentTask(config, tmp_path, progress_bar=False).sft_policy()
    assert "resuming from step 15" in capsys.readouterr().out
    assert (final / "model.safetensors").exists()
    records = [json.loads(line) for line in (final.parent / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if "loss" in record] == list(range(1, 31))  # each step logged once


def test_a_run_never_takes_the_directory_of_a_stage():
    """Run directories begin with their method's name, so no run (overrides included) writes into a stage's."""
    config = toy(preset("tiny"))
    stages = {"tokenizer", "sft", "pairs", "reward-model", "sft-evaluation", "reference-cache"}
    runs = [method.run for method in sweep_methods(config)] + [Method("dpo", "beta", 0.1, (("loss", "ipo"),)).run]
    assert "dpo-beta-0.1-loss-ipo" in runs and not stages & set(runs)
