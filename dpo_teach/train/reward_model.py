"""The Bradley-Terry reward model trainer: the first stage of RLHF (PPO-RM on the frontier), on the shared loop.

The model is the policy's architecture with a one-output head (paper App. C.1): for GPT-2,
``GPT2ForSequenceClassification`` with ``num_labels=1``, started from the SFT policy, whose score
r_phi(x, y) is read at the last token of prompt + completion. For a micro-batch of B pairs:

1. one forward pass over the 2B concatenated rows gives r_phi(x, y_w) and r_phi(x, y_l), each ``(B,)``;
2. the Bradley-Terry negative log-likelihood (notebook 1, Eq. 1.2) of each pair,
   -log sigma(r_phi(x, y_w) - r_phi(x, y_l)), is the loss; ``num_items`` counts pairs.

Which token is scored. transformers' sequence classifiers for causal LMs score the rightmost token
that is not ``config.pad_token_id``. GPT-2 pads with EOS, and every completion ends with EOS, so a
row is collated here without its final EOS: it ends where the text ends, as in ``reward(texts)``
at inference (``dpo_teach.sentiment.rewards.ClassifierReward`` tokenizes plain text, no EOS), and
its last real token is never the pad token (checked), so the score is read at that token in any
padded batch. The model's own forward does the reading, so DDP and FSDP wrappers work unchanged.

The best held-out accuracy is kept (paper App. C.1, ``keep_best``): whenever an evaluation beats
every earlier one, its weights are written to ``OUTPUT/best/``; at the end ``final/`` is a copy of
them, and ``final/best.json`` names the step and its held-out metrics.

Metrics (docs/metrics.md): ``loss``, ``accuracy`` (ties count 1/2), ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``; the same, with an ``eval/`` prefix, on the held-out pairs.
The trained model is a reward function: ``make_reward(final_dir, positive_label=0, output="logit")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from dpo_teach.data import collate_preference
from dpo_teach.train.checkpoint import complete_checkpoints
from dpo_teach.train.config import RewardModelConfig
from dpo_teach.train.dpo import evaluate_pairs
from dpo_teach.train.loop import StepOutput, train_loop
from dpo_teach.train.models import DTYPES
from dpo_teach.train.setup import prepare_run

Batch = dict[str, torch.Tensor]
METRIC_NAMES = ("loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins")


def load_reward_model(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` with one output from a causal LM (or a reward model) checkpoint.

    A causal LM's body is loaded and a new score head is initialized from the current torch seed.
    """
    if not name_or_path:
        raise ValueError("model: give a path or Hub name of the policy to start from (or pass a model object)")
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, dtype=DTYPES[dtype])


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """-log sigma(r(x, y_w) - r(x, y_l)), the negative log-likelihood of the Bradley-Terry model (notebook 1,
    Eq. 1.2; DPO paper Eq. 2). Rewards ``(B,)`` each; returns losses ``(B,)``. It is ``dpo_loss`` with beta = 1
    and log-probs replaced by rewards against a zero reference (see ``dpo_teach.bandit.fit_reward_model``)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def _without_final_eos(token_ids: list[int], eos_token_id: int) -> list[int]:
    return token_ids[:-1] if len(token_ids) > 1 and token_ids[-1] == eos_token_id else token_ids


def collate_scored_pairs(examples: list[dict], pad_token_id: int, eos_token_id: int) -> Batch:
    """``input_ids`` and ``attention_mask`` ``(2B, T)``: prompt + chosen in rows ``0..B-1``, prompt + rejected in
    rows ``B..2B-1``, right-padded, each completion without the EOS that tokenization appended (module docstring)."""
    stripped = [
        {
            "prompt_input_ids": example["prompt_input_ids"],
            "chosen_input_ids": _without_final_eos(example["chosen_input_ids"], eos_token_id),
            "rejected_input_ids": _without_final_eos(example["rejected_input_ids"], eos_token_id),
        }
        for example in examples
    ]
    batch = collate_preference(stripped, pad_token_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def reward_scores(model: torch.nn.Module, batch: Batch, pad_token_id: int) -> torch.Tensor:
    """r_phi of each right-padded row of ``batch`` ``(N, T)``, read at its last real token; returns ``(N,)`` float32.

    ``model`` is a one-output sequence classifier whose ``config.pad_token_id`` is ``pad_token_id``. Raises
    ValueError if a row's last real token is the pad token: transformers would then score an earlier token.
    """
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]  # (N, T) each
    lengths = attention_mask.sum(dim=-1)  # (N,)
    if not torch.equal(attention_mask.cumprod(dim=-1).sum(dim=-1), lengths) or (lengths == 0).any():
        raise ValueError("batch: every row must be right-padded (attention_mask ones, then zeros) and non-empty")
    last_tokens = input_ids.gather(1, (lengths - 1)[:, None]).squeeze(1)  # (N,)
    ending_in_pad = (last_tokens == pad_token_id).nonzero().flatten().tolist()
    if ending_in_pad:
        raise ValueError(
            f"rows {ending_in_pad} end with the pad token {pad_token_id}; the classifier scores the last token that "
            "is not padding, so it would score an earlier one. Remove the trailing pad/EOS tokens from these rows"
        )
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (N, 1)
    return logits.squeeze(-1).float()


class RewardModelObjective:
    """The Bradley-Terry loss of one micro-batch of pairs; ``num_items`` counts pairs."""

    def __init__(self, config: RewardModelConfig, accelerator: Accelerator, pad_token_id: int) -> None:
        self.config = config
        self.accelerator = accelerator
        self.pad_token_id = pad_token_id

    def num_items(self, batch: Batch) -> int:
        return batch["input_ids"].shape[0] // 2

    def metric_names(self) -> list[str]:
        """``loss`` and the per-pair metrics of :meth:`per_pair`, in its order."""
        return list(METRIC_NAMES)

    def per_pair(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses ``(B,)`` (attached to the graph) and detached per-pair metrics, each ``(B,)``."""
        scores = reward_scores(model, batch, self.pad_token_id)  # (2B,): one forward for chosen and rejected
        chosen_rewards, rejected_rewards = scores.chunk(2)  # (B,) each
        losses = bradley_terry_loss(chosen_rewards, rejected_rewards)
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        ties = (chosen_rewards == rejected_rewards).float()  # a tie counts 1/2, as in the DPO trainer
        metrics = {
            "accuracy": (chosen_rewards > rejected_rewards).float() + 0.5 * ties,
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
        }
        return losses, metrics

    def __call__(self, model: torch.nn.Module, batch: Batch) -> StepOutput:
        losses, metrics = self.per_pair(model, batch)
        return StepOutput(loss_sum=losses.sum(), metrics=metrics)


def resumed_step(config: RewardModelConfig) -> int:
    """The step ``train_loop`` will start from: the newest complete checkpoint's when resuming, else 0."""
    checkpoints = complete_checkpoints(config.output_dir) if config.resume else []
    return json.loads((checkpoints[-1] / "trainer_state.json").read_text())["step"] if checkpoints else 0


def evaluation_steps(config: RewardModelConfig, start: int) -> list[int]:
    """The steps at which ``train_loop`` evaluates a run starting from ``start``: step 0 unless resuming, every
    ``eval_every`` steps after ``start``, and the last step."""
    later = [step for step in range(start + 1, config.max_steps + 1) if step % config.eval_every == 0]
    if later[-1:] != [config.max_steps] and start < config.max_steps:
        later.append(config.max_steps)
    return ([0] if start == 0 else []) + later


class BestCheckpoint:
    """Keeps in ``OUTPUT/best/`` the weights of the evaluation with the highest held-out accuracy (earliest on ties).

    A resumed run keeps the best of the run it continues (evaluated on the same held-out pairs, up to its
    ``max_steps``): it repeats the same steps, so the evaluations it repeats cannot beat those already made.
    Anything else in ``best/`` is replaced by this run's first evaluation.
    """

    def __init__(self, accelerator: Accelerator, tokenizer, config: RewardModelConfig, held_out: list[dict]) -> None:
        self.accelerator, self.tokenizer = accelerator, tokenizer
        self.directory = Path(config.output_dir) / "best"
        pairs = [[example[key] for key in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")]
                 for example in held_out]  # fmt: skip
        self.held_out = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
        start = resumed_step(config)
        self.steps = iter(evaluation_steps(config, start))
        path = self.directory / "best.json"
        record = json.loads(path.read_text()) if path.exists() else None
        continues = record is not None and start > 0 and record["held_out"] == self.held_out
        self.record = record if continues and record["step"] <= config.max_steps else None

    def evaluate(self, model: torch.nn.Module, evaluate: Callable[[torch.nn.Module], dict[str, float]]) -> dict:
        """``evaluate(model)``; its weights are saved if its held-out accuracy beats every earlier evaluation's."""
        evaluation = evaluate(model)
        step = next(self.steps)
        if self.record is None or evaluation["accuracy"] > self.record["eval/accuracy"]:
            self.record = {"step": step, **{f"eval/{key}": value for key, value in evaluation.items()}}
            self.record["held_out"] = self.held_out
            self._save(model)
        return evaluation

    def _save(self, model: torch.nn.Module) -> None:
        """Write ``best/`` under a temporary name and rename it, as checkpoints are (every process must call)."""
        temporary = self.directory.with_name(".incomplete-best")
        state_dict = self.accelerator.get_state_dict(model)  # gathers shards under FSDP
        if self.accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
            self.accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict)
            self.tokenizer.save_pretrained(temporary)
            (temporary / "best.json").write_text(json.dumps(self.record, indent=2))
            replaced = self.directory.with_name(".replaced-best")
            if self.directory.exists():
                os.replace(self.directory, replaced)
            os.replace(temporary, self.directory)
            shutil.rmtree(replaced, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def finish(self, final: Path) -> None:
        """Replace the last weights in ``final`` by the best ones."""
        if self.record is None:
            raise ValueError(f"keep_best: no evaluation of this run is in {self.directory} to keep")
        if self.accelerator.is_main_process:
            shutil.rmtree(final)
            shutil.copytree(self.directory, final)
        self.accelerator.wait_for_everyone()


def _check_classifier(model: torch.nn.Module, tokenizer) -> None:
    """A one-output classifier whose pad token is the tokenizer's (set when the config has none, as GPT-2's)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "num_labels", None) != 1:
        raise ValueError(
            "model: a reward model is a sequence classifier with one output (num_labels=1); "
            f"got {type(model).__name__}. Load one with load_reward_model(policy_path)"
        )
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(
            f"model: config.pad_token_id={config.pad_token_id} differs from the tokenizer's pad token id "
            f"{tokenizer.pad_token_id}; the classifier finds each row's last token by the pad id, so they must agree"
        )


def train_reward_model(
    config: RewardModelConfig,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples=None,
    eval_examples=None,
    accelerator: Accelerator | None = None,
) -> Path:
    """Train a Bradley-Terry reward model on preference pairs; returns the directory of the final model.

    ``model`` (a one-output sequence classifier) defaults to :func:`load_reward_model` of ``config.model``, its
    score head seeded by ``config.seed``; ``tokenizer`` and the examples default to ``config.model`` and
    ``config.train_data`` / ``config.eval_data`` (a list of dicts, a ``datasets.Dataset``, or a JSONL path).
    With ``keep_best`` the final model is the one with the highest held-out accuracy (``final/best.json``).
    """
    if model is None:
        set_seed(config.seed)
        model = load_reward_model(config.model, config.model_dtype)
    run = prepare_run(config, "preference", model, tokenizer, train_examples, eval_examples, accelerator)
    held_out = run.held_out
    _check_classifier(run.model, run.tokenizer)
    if config.keep_best and not held_out:
        raise ValueError(
            "keep_best: there are no held-out pairs to choose the best weights by; give eval_data (or eval_examples), "
            "or set keep_best: false"
        )
    collate = partial(
        collate_scored_pairs, pad_token_id=run.tokenizer.pad_token_id, eos_token_id=run.tokenizer.eos_token_id
    )
    objective = RewardModelObjective(config, run.accelerator, run.tokenizer.pad_token_id)
    evaluate = (
        partial(
            evaluate_pairs, objective=objective, examples=held_out, collate=collate, batch_size=config.eval_batch_size
        )
        if held_out
        else None
    )
    best = BestCheckpoint(run.accelerator, run.tokenizer, config, held_out) if config.keep_best else None
    if best is not None:
        evaluate = partial(best.evaluate, evaluate=evaluate)
    final = train_loop(run.accelerator, run.model, run.tokenizer, objective, run.train, collate, config, evaluate)
    if best is not None:
        best.finish(final)
    return final
