"""The unlikelihood trainer: a baseline of the DPO paper (Sec. 6) on preference pairs, on the shared loop.

Raise the likelihood of the chosen completion and lower, token by token, that of the rejected one
(Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"):

    loss = -(1 / |y_w|) sum_t log pi(y_w,t | ...) - alpha (1 / |y_l|) sum_t log(1 - pi(y_l,t | ...))

(``dpo_teach.losses.unlikelihood_loss``, where the docstring explains why the term is per token and
not alpha * log(1 - pi(y_l | x)) on the whole sequence). One forward pass over the 2B concatenated
rows gives every completion token's log-prob (``dpo_teach.logprobs.token_logps``); there is no
reference model. ``num_items`` counts pairs, so each pair weighs the same.

Metrics (docs/metrics.md): ``loss``, ``nll/chosen``, ``unlikelihood/rejected``, ``logps/chosen``,
``logps/rejected``; the same, with an ``eval/`` prefix, on the held-out pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from dpo_teach.data import collate_preference
from dpo_teach.logprobs import token_logps
from dpo_teach.losses import unlikelihood_loss
from dpo_teach.train.config import UnlikelihoodConfig
from dpo_teach.train.loop import train_loop
from dpo_teach.train.pairs import PairObjective, pair_evaluation
from dpo_teach.train.run import Callback, TrainingRun
from dpo_teach.train.setup import load_inputs

Batch = dict[str, torch.Tensor]
METRIC_NAMES = ("loss", "nll/chosen", "unlikelihood/rejected", "logps/chosen", "logps/rejected")


class UnlikelihoodObjective(PairObjective):
    """Likelihood of chosen, unlikelihood of rejected, for one micro-batch of pairs; ``num_items`` counts pairs."""

    metric_names = METRIC_NAMES

    def __init__(self, config: UnlikelihoodConfig) -> None:
        self.config = config

    def per_pair(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses ``(B,)`` (attached to the graph) and detached per-pair metrics, each ``(B,)``."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (2B, T, V)
        per_token, mask = token_logps(logits, batch["labels"])  # (2B, T-1) each, one forward for both halves
        chosen_tokens, rejected_tokens = per_token.chunk(2)  # (B, T-1) each
        chosen_mask, rejected_mask = mask.chunk(2)
        policy_chosen_logps = chosen_tokens.sum(dim=-1)  # (B,) log pi(y_w | x)
        # loss = -(1/|y_w|) sum_t log pi(y_w,t | .) - alpha (1/|y_l|) sum_t log(1 - pi(y_l,t | .)) (Welleck et al.)
        loss = unlikelihood_loss(
            policy_chosen_logps, chosen_mask.sum(dim=-1), rejected_tokens, rejected_mask, self.config.alpha
        )
        metrics = {
            "nll/chosen": loss.chosen_nll,
            "unlikelihood/rejected": loss.rejected_unlikelihood,
            "logps/chosen": policy_chosen_logps.detach(),
            "logps/rejected": rejected_tokens.detach().sum(dim=-1),
        }
        return loss.losses, metrics


def train_unlikelihood(
    config: UnlikelihoodConfig,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples=None,
    eval_examples=None,
    accelerator: Accelerator | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a policy with the unlikelihood loss of ``config.alpha``; returns the directory of the final model.

    ``model``, ``tokenizer`` and the examples default to ``config.model`` and ``config.train_data`` /
    ``config.eval_data``; examples are preference pairs (a list of dicts, a ``datasets.Dataset``, or a JSONL path).
    ``accelerator`` and ``callbacks`` as in ``dpo_teach.train.dpo.train_dpo``.
    """
    with TrainingRun(config, accelerator, "Unlikelihood", callbacks) as run:
        inputs = load_inputs(run, "preference", model, tokenizer, train_examples, eval_examples)
        collate = partial(collate_preference, pad_token_id=inputs.tokenizer.pad_token_id)
        objective = UnlikelihoodObjective(config)
        if inputs.held_out:
            run.add_evaluation(pair_evaluation(run, objective, inputs.held_out, collate))
        return train_loop(run, inputs.model, inputs.tokenizer, objective, inputs.train, collate)
