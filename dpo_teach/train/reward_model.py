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

The best held-out accuracy is kept (paper App. C.1, ``keep_best``): the held-out evaluation is a callback
of the run (``dpo_teach.train.run``), called with its step; whenever it beats every earlier one, its
weights are written to ``OUTPUT/best/``; at the end ``final/`` is a copy of them, and ``final/best.json``
names the step and its held-out metrics.

Metrics (docs/metrics.md): ``loss``, ``accuracy`` (ties count 1/2), ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``; the same, with an ``eval/`` prefix, on the held-out pairs.
The trained model is a reward function: ``make_reward(final_dir, positive_label=0, output="logit")``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from dpo_teach import io
from dpo_teach.data import collate_preference
from dpo_teach.losses import bradley_terry_loss, pairwise_accuracy
from dpo_teach.train.config import RewardModelConfig
from dpo_teach.train.loop import train_loop
from dpo_teach.train.models import DTYPES
from dpo_teach.train.pairs import PairObjective, pair_evaluation
from dpo_teach.train.run import Callback, TrainingRun
from dpo_teach.train.setup import load_inputs

Batch = dict[str, torch.Tensor]
METRIC_NAMES = ("loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins")


def load_reward_model(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` with one output from a causal LM (or a reward model) checkpoint.

    A causal LM's body is loaded and a new score head is initialized from the current torch seed. transformers
    reports that head as missing from the checkpoint ("LOAD REPORT ... score.weight MISSING"): expected, since a
    language model has no score head, so that report alone is not printed; any other missing weight still is.
    """
    if not name_or_path:
        raise ValueError("model: give a path or Hub name of the policy to start from (or pass a model object)")
    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(_is_not_the_new_head_report)
    try:
        return AutoModelForSequenceClassification.from_pretrained(name_or_path, num_labels=1, dtype=DTYPES[dtype])
    finally:
        logger.removeFilter(_is_not_the_new_head_report)


def _is_not_the_new_head_report(record: logging.LogRecord) -> bool:
    """False for a load report whose only finding is the new score head (``score.*`` keys, MISSING)."""
    message = record.getMessage()
    if "LOAD REPORT" not in message:
        return True
    findings = [
        line for line in message.splitlines() if "MISSING" in line or "UNEXPECTED" in line or "MISMATCH" in line
    ]
    keys = [line for line in findings if "|" in line]
    return not keys or not all(line.strip().startswith("score.") and "MISSING" in line for line in keys)


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


class RewardModelObjective(PairObjective):
    """The Bradley-Terry loss of one micro-batch of pairs; ``num_items`` counts pairs."""

    metric_names = METRIC_NAMES

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def per_pair(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses ``(B,)`` (attached to the graph) and detached per-pair metrics, each ``(B,)``."""
        scores = reward_scores(model, batch, self.pad_token_id)  # (2B,): one forward for chosen and rejected
        chosen_rewards, rejected_rewards = scores.chunk(2)  # (B,) each
        # DPO paper Eq. 2: loss = -log sigma(r_phi(x, y_w) - r_phi(x, y_l))
        losses = bradley_terry_loss(chosen_rewards, rejected_rewards)
        chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
        metrics = {
            "accuracy": pairwise_accuracy(chosen_rewards, rejected_rewards),  # a tie counts 1/2
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
        }
        return losses, metrics


class BestCheckpoint:
    """A callback keeping in ``OUTPUT/best/`` the weights of the evaluation with the highest held-out accuracy
    (the earliest on ties), evaluated every ``eval_every`` steps (``dpo_teach.train.run.every``).

    A resumed run keeps the best of the run it continues, as far as the checkpoint it resumed from: those
    evaluations were made before that checkpoint was written, on the same held-out pairs. Anything else in
    ``best/`` (a fresh run's predecessor, evaluations that will be made again) is replaced.
    """

    def __init__(self, run: TrainingRun, held_out: list[dict], evaluate: Callable[[torch.nn.Module], dict]) -> None:
        self.run, self.evaluate = run, evaluate
        self.directory = Path(run.config.output_dir) / "best"
        pairs = [[example[key] for key in ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")]
                 for example in held_out]  # fmt: skip
        self.held_out = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
        self.record: dict | None = None
        self.started = False

    def __call__(self, step: int, model: torch.nn.Module) -> dict[str, float] | None:
        """At an evaluation step: ``evaluate(model)``, its weights saved if it beats every earlier evaluation."""
        if not self.started:  # the run has resumed (or not) by its first callback
            self.started = True
            path = self.directory / "best.json"
            record = json.loads(path.read_text()) if path.exists() else None
            start = self.run.start_step
            continues = start > 0 and record is not None and record["held_out"] == self.held_out
            continues = continues and record["step"] <= start
            self.record = record if continues else None
        config = self.run.config
        if not (step % config.eval_every == 0 or step == config.max_steps):
            return None
        evaluation = self.evaluate(model)
        if self.record is None or evaluation["accuracy"] > self.record["eval/accuracy"]:
            self.record = {"step": step, **{f"eval/{key}": value for key, value in evaluation.items()}}
            self.record["held_out"] = self.held_out
            self._save(model)
        return evaluation

    def _save(self, model: torch.nn.Module) -> None:
        """Write ``best/`` under a temporary name and rename it, as checkpoints are (every process must call)."""
        accelerator = self.run.accelerator
        state_dict = accelerator.get_state_dict(model)  # gathers shards under FSDP
        if accelerator.is_main_process:
            temporary = io.remove_temporary_directory(self.directory)
            accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict)
            self.run.tokenizer.save_pretrained(temporary)
            (temporary / "best.json").write_text(json.dumps(self.record, indent=2))
            io.replace_directory(temporary, self.directory)
        accelerator.wait_for_everyone()

    def finish(self, final: Path) -> None:
        """Replace the last weights in ``final`` by the best ones."""
        if self.record is None:
            raise ValueError(f"keep_best: no evaluation of this run is in {self.directory} to keep")
        if self.run.accelerator.is_main_process:
            temporary = io.remove_temporary_directory(final)
            shutil.copytree(self.directory, temporary)
            io.replace_directory(temporary, final)
        self.run.accelerator.wait_for_everyone()


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
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a Bradley-Terry reward model on preference pairs; returns the directory of the final model.

    ``model`` (a one-output sequence classifier) defaults to :func:`load_reward_model` of ``config.model``, its
    score head seeded by ``config.seed``; ``tokenizer`` and the examples default to ``config.model`` and
    ``config.train_data`` / ``config.eval_data`` (a list of dicts, a ``datasets.Dataset``, or a JSONL path).
    With ``keep_best`` the final model is the one with the highest held-out accuracy (``final/best.json``).
    ``accelerator`` and ``callbacks`` as in ``dpo_teach.train.dpo.train_dpo``.
    """
    with TrainingRun(config, accelerator, "RewardModel", callbacks) as run:
        inputs = load_inputs(
            run, "preference", model, tokenizer, train_examples, eval_examples, load_model=load_reward_model
        )  # the run's random streams are seeded before a new score head is drawn
        _check_classifier(inputs.model, inputs.tokenizer)
        if config.keep_best and not inputs.held_out:
            raise ValueError(
                "keep_best: there are no held-out pairs to choose the best weights by; give eval_data (or "
                "eval_examples), or set keep_best: false"
            )
        collate = partial(
            collate_scored_pairs, pad_token_id=inputs.tokenizer.pad_token_id, eos_token_id=inputs.tokenizer.eos_token_id
        )
        objective = RewardModelObjective(inputs.tokenizer.pad_token_id)
        best = None
        if inputs.held_out:
            evaluate = pair_evaluation(run, objective, inputs.held_out, collate)
            if config.keep_best:
                best = BestCheckpoint(run, inputs.held_out, evaluate)
                run.callbacks.insert(0, best)  # evaluates every eval_every steps itself, keeping the best weights
            else:
                run.add_evaluation(evaluate)
        final = train_loop(run, inputs.model, inputs.tokenizer, objective, inputs.train, collate)
        if best is not None:
            best.finish(final)
        return final
