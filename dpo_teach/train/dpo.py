"""The DPO trainer: any loss of ``dpo_teach.losses`` on preference pairs, on the shared loop.

One optimizer step, for a micro-batch of B pairs (notebook 6 walks through it):

1. one forward pass of the policy over the 2B concatenated sequences gives
   log pi_theta(y_w | x) and log pi_theta(y_l | x), each ``(B,)`` (``dpo_teach.logprobs``);
2. the reference's log-probs come from the batch (precomputed, the default) or from a frozen
   reference model (online);
3. the loss function of the config (DPO Eq. 7 by default) turns the four ``(B,)`` tensors into
   per-pair losses and implicit rewards r_hat = beta * (log pi_theta - log pi_ref) (DPO Eq. 5);
4. the loop sums the losses, scales them by the number of pairs in the whole step and updates.

Metrics (docs/metrics.md): ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
``rewards/accuracies`` (ties count 1/2), ``logps/chosen``, ``logps/rejected``, and ``nll`` when the
NLL term is on; the same, with an ``eval/`` prefix, on the held-out pairs.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from dpo_teach.data import collate_preference
from dpo_teach.logprobs import concatenated_logps
from dpo_teach.losses import get_loss, nll_loss, pairwise_accuracy
from dpo_teach.train.config import DPOConfig
from dpo_teach.train.loop import train_loop
from dpo_teach.train.models import DTYPES, load_causal_lm
from dpo_teach.train.pairs import PairObjective, pair_evaluation
from dpo_teach.train.reference import reference_logps
from dpo_teach.train.run import Callback, TrainingRun
from dpo_teach.train.setup import load_inputs

Batch = dict[str, torch.Tensor]
METRIC_NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def collate_pairs(examples: list[dict], pad_token_id: int) -> Batch:
    """``dpo_teach.data.collate_preference`` plus the precomputed reference log-probs ``(B,)`` when present."""
    batch = collate_preference(examples, pad_token_id)
    if "ref_chosen_logps" in examples[0]:
        batch["ref_chosen_logps"] = torch.tensor([example["ref_chosen_logps"] for example in examples])
        batch["ref_rejected_logps"] = torch.tensor([example["ref_rejected_logps"] for example in examples])
    return batch


class DPOObjective(PairObjective):
    """The preference loss of one micro-batch of pairs; ``num_items`` counts pairs."""

    def __init__(self, config: DPOConfig, accelerator: Accelerator, reference: torch.nn.Module | None) -> None:
        self.config = config
        self.accelerator = accelerator
        self.loss_function = get_loss(config.loss)
        self.reference = reference  # None: the batches carry precomputed reference log-probs
        self.metric_names = (*METRIC_NAMES, *(["nll"] if config.nll_weight > 0 else []))

    @torch.no_grad()
    def reference_logps(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi_ref(y_w | x), log pi_ref(y_l | x), each ``(B,)``: from the batch, or the online reference."""
        if "ref_chosen_logps" in batch:
            return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        if self.config.loss == "simpo":  # reference-free: simpo_loss ignores these
            zeros = torch.zeros(batch["input_ids"].shape[0] // 2, device=batch["input_ids"].device)
            return zeros, zeros
        if self.reference is None:
            raise ValueError("the batch has no precomputed reference log-probs and there is no reference model")
        with self.accelerator.autocast():
            logps = concatenated_logps(self.reference, batch, average=self.config.average_logps)
        return logps.chosen, logps.rejected

    def per_pair(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses ``(B,)`` (attached to the graph) and detached per-pair metrics, each ``(B,)``."""
        # log pi_theta(y_w | x) and log pi_theta(y_l | x) = sum_t log pi_theta(y_t | x, y_<t), one forward over 2B rows
        policy = concatenated_logps(model, batch, average=self.config.average_logps)
        ref_chosen_logps, ref_rejected_logps = self.reference_logps(batch)
        # DPO Eq. 7: loss = -log sigma(beta log pi(y_w|x)/pi_ref(y_w|x) - beta log pi(y_l|x)/pi_ref(y_l|x))
        # (or the config's variant, dpo_teach.losses); rewards: DPO Eq. 5, r_hat = beta log pi(y|x)/pi_ref(y|x)
        losses, chosen_rewards, rejected_rewards = self.loss_function(
            policy.chosen,
            policy.rejected,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=self.config.beta,
            **self.config.loss_kwargs(),
        )
        metrics = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": pairwise_accuracy(chosen_rewards, rejected_rewards),  # a tie counts 1/2
            "logps/chosen": policy.chosen.detach(),
            "logps/rejected": policy.rejected.detach(),
        }
        if self.config.nll_weight > 0:
            # RPO's term, -log pi_theta(y_w | x) / |y_w| (per token), from the same forward pass
            nll = nll_loss(policy.chosen, None if self.config.average_logps else policy.chosen_tokens)
            metrics["nll"] = nll.detach()
            losses = losses + self.config.nll_weight * nll
        return losses, metrics


def _reference_model(config: DPOConfig, policy: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The reference: the initial policy itself (precompute), a frozen copy of it (online), or a loaded model."""
    if config.reference:
        reference = load_causal_lm(config.reference, config.reference_dtype or config.model_dtype)
    elif config.precompute_ref and not config.reference_dtype:
        return policy  # its log-probs are taken before the first update: no second model
    else:
        reference = copy.deepcopy(policy)
        if config.reference_dtype:
            reference.to(DTYPES[config.reference_dtype])
    reference.requires_grad_(False)
    return reference.eval().to(device)


def train_dpo(
    config: DPOConfig,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples=None,
    eval_examples=None,
    accelerator: Accelerator | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a policy with the preference loss of ``config``; returns the directory of the final model.

    ``model``, ``tokenizer`` and the examples default to ``config.model`` and ``config.train_data`` /
    ``config.eval_data``; examples are a list of dicts, a ``datasets.Dataset``, or a JSONL path. ``accelerator``
    is the caller's (kept alive) or, when None, one made and ended here; ``callbacks`` run after every step
    (``dpo_teach.train.run``), after the held-out evaluation every ``eval_every`` steps.
    """
    with TrainingRun(config, accelerator, "DPO", callbacks) as run:
        inputs = load_inputs(run, "preference", model, tokenizer, train_examples, eval_examples)
        collate = partial(collate_pairs, pad_token_id=inputs.tokenizer.pad_token_id)
        reference = None if config.loss == "simpo" else _reference_model(config, inputs.model, run.accelerator.device)
        if config.precompute_ref and reference is not None:
            cache_dir = Path(config.reference_cache_dir or Path(config.output_dir) / "reference")
            for examples, what in ((inputs.train, "train"), (inputs.held_out, "eval")):
                if not examples:
                    continue
                logps = reference_logps(
                    run.accelerator, reference, examples, collate, config.eval_batch_size, config.average_logps,
                    cache_dir, f"reference log-probs ({what})", config.progress_bar,
                )  # fmt: skip  # (N, 2)
                for example, (chosen, rejected) in zip(examples, logps.tolist(), strict=True):
                    example["ref_chosen_logps"], example["ref_rejected_logps"] = chosen, rejected
            reference = None  # freed before training: precompute keeps no reference in memory
            gc.collect()
        objective = DPOObjective(config, run.accelerator, reference)
        if inputs.held_out:
            run.add_evaluation(pair_evaluation(run, objective, inputs.held_out, collate))
        return train_loop(run, inputs.model, inputs.tokenizer, objective, inputs.train, collate)
