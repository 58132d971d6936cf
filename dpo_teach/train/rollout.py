"""The rollout side of PPO for language models: completions laid out as tensors, per-token log-probs and values.

A rollout of B prompts is laid out as in lm-human-preferences and TRL: prompts left-padded to a common
width P, completions right-padded to a common width C, so completion token t of every row is at column
P + t and every per-token tensor of PPO is ``(B, C)``, with ``mask`` 1 on real completion tokens:

    column    0    1    2    3  |  4    5    6    7          (P = 4, C = 4)
    row 0     pad  pad  x1   x2 |  y1   y2   EOS  pad
    row 1     x1   x2   x3   x4 |  y1   y2   y3   y4         (cut at max_new_tokens: no EOS)

The logits and the value at column P + t - 1 belong to completion token t: they are computed from the
state (x, y_<t) in which token t is chosen. Position ids count real tokens only (cumsum of the attention
mask - 1, ``dpo_teach.logprobs.position_ids``), as ``generate`` does, so a left-padded prompt gets the
positions, hence the logits, it had while its completion was sampled.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers import AutoModelForTokenClassification, PreTrainedModel

from dpo_teach.data import IGNORE_INDEX, pad_sequences
from dpo_teach.logprobs import completion_logits, position_ids, token_logps
from dpo_teach.rl import entropy_from_logits

Batch = dict[str, torch.Tensor]


def rollout_batch(
    prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_token_id: int
) -> Batch:
    """The layout of the module docstring: ``input_ids``, ``attention_mask`` and ``labels`` ``(B, P + C)`` (labels
    -100 on prompt and padding), ``completion_ids`` ``(B, C)`` (padded with ``pad_token_id``) and ``mask`` ``(B, C)``
    float (1 on real tokens).

    Every completion needs at least one token (``sample`` always draws one: EOS or another).
    """
    prompts = pad_sequences(prompt_ids, pad_token_id, side="left")  # (B, P)
    prompt_mask = pad_sequences([[1] * len(ids) for ids in prompt_ids], 0, side="left")  # (B, P)
    completions = pad_sequences(completion_ids, pad_token_id)  # (B, C)
    completion_mask = pad_sequences([[1] * len(ids) for ids in completion_ids], 0)  # (B, C)
    return {
        "input_ids": torch.cat([prompts, completions], dim=1),  # (B, P + C)
        "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),  # (B, P + C)
        "labels": torch.cat(
            [torch.full_like(prompts, IGNORE_INDEX), completions.masked_fill(completion_mask == 0, IGNORE_INDEX)], dim=1
        ),  # (B, P + C)
        "completion_ids": completions,  # (B, C)
        "mask": completion_mask.float(),  # (B, C)
    }


def rollout_logps(
    model: torch.nn.Module, batch: Batch, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_t | x, y_<t) of every completion token, ``(B, C)`` (0 on padding), and with ``with_entropy`` the
    entropy of pi(. | x, y_<t) at each of them, ``(B, C)``; float32 at least, whatever the logits' dtype.

    One forward pass (``dpo_teach.logprobs.completion_logits``: the LM head runs only on the C + 1 last columns)
    and ``dpo_teach.logprobs.token_logps``, the toolkit's one log-prob implementation.
    """
    logits, labels = completion_logits(model, batch)  # (B, C + 1, V), (B, C + 1): column P + t - 1 predicts token t
    logps, _ = token_logps(logits, labels)  # (B, C)
    return logps, entropy_from_logits(logits[:, :-1]) if with_entropy else None


def token_values(value_model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """V(x, y_<t) for every completion token t, ``(B, C)`` float32: the scalar head at column P + t - 1."""
    width = batch["completion_ids"].shape[1]
    values = value_model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=position_ids(batch["attention_mask"]),
        use_cache=False,
    ).logits  # (B, P + C, 1)
    return values[:, -width - 1 : -1, 0].float()  # (B, C)


def make_value_model(policy: PreTrainedModel) -> PreTrainedModel:
    """A separate value model with the policy's architecture and a scalar head per position.

    ``AutoModelForTokenClassification`` with ``num_labels=1`` (GPT-2: ``GPT2ForTokenClassification``); its
    transformer starts as a copy of the policy's, its head at zero, so every value starts at 0 (the value head
    of lm-human-preferences is initialized with scale 0, language/model.py). Returned on the CPU in the
    policy's dtype.
    """
    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    value_model = AutoModelForTokenClassification.from_config(config).to(policy.dtype)
    value_model.base_model.load_state_dict(policy.base_model.state_dict())
    trunk = value_model.base_model_prefix + "."
    with torch.no_grad():
        for name, parameter in value_model.named_parameters():
            if not name.startswith(trunk):
                parameter.zero_()  # the head
    return value_model
