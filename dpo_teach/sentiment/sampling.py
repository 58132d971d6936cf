"""Prompts and samples of the sentiment task: review prefixes, and K completions per prompt from a policy.

The DPO paper's controlled-sentiment task (Rafailov et al. 2023, Sec. 6.1 and App. C.1): the prompts x
are prefixes of 2-8 tokens of movie reviews, and the SFT policy samples completions y ~ pi(. | x) that a
sentiment reward then labels (``dpo_teach.sentiment.pairs``). Notebook 5 walks through both steps.

With the default :class:`SamplingConfig` the samples are *pure ancestral samples*: each token is drawn
from the policy's own softmax, y_t ~ pi(. | x, y_<t), with no temperature, top-k or top-p. The
evaluation's KL estimates (``dpo_teach.sentiment.evaluate``) are unbiased only for such samples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


def make_prompts(texts: list[str], tokenizer, min_tokens: int = 2, max_tokens: int = 8, seed: int = 0) -> list[str]:
    """One prompt per review: its first n tokens, n ~ Uniform{min_tokens, ..., max_tokens} (paper App. C.1: 2-8).

    Each text is tokenized with ``add_special_tokens=False``, cut to n tokens and decoded back to a
    string: the string is the canonical prompt, re-tokenized by ``sample`` and by the DPO data pipeline.
    n is drawn for every text from ``random.Random(seed)``, so the output is deterministic. A text is
    skipped (the result may be shorter than ``texts``) when it has no more than n tokens (the prompt
    must be a proper prefix), or when its prefix does not round-trip: the decoded string is not the
    start of the text (a token boundary inside a multi-byte character) or re-tokenizes to a length
    outside [min_tokens, max_tokens].
    """
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"need 0 < min_tokens <= max_tokens, got min_tokens={min_tokens}, max_tokens={max_tokens}")
    rng = random.Random(seed)
    prompts = []
    for text in texts:
        length = rng.randint(min_tokens, max_tokens)  # drawn before any skip, so each text's n depends only on seed
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token_ids) <= length:
            continue
        prompt = tokenizer.decode(token_ids[:length], clean_up_tokenization_spaces=False)
        retokenized = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if text.startswith(prompt) and min_tokens <= len(retokenized) <= max_tokens:
            prompts.append(prompt)
    return prompts


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{field}: {message}")


@dataclass
class SamplingConfig:
    """How completions are drawn. The defaults are pure ancestral sampling, which evaluation requires."""

    max_new_tokens: int = 48
    """Longest completion in tokens (EOS included); a completion that reaches it is cut there, without EOS."""
    temperature: float = 1.0
    """Divide the logits by this before the softmax; 1.0 samples from the policy itself."""
    top_k: int = 0
    """Sample among the k most likely tokens only; 0 turns it off (transformers' own default would be 50)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens with probability >= top_p; 1.0 turns it off."""
    batch_size: int = 64
    """Sequences generated at once (prompts x samples, in prompt-major order)."""
    seed: int = 0
    """Seeds every batch: the same model, prompts and config give the same samples."""

    def __post_init__(self) -> None:
        _require(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        _require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _require(self.top_k >= 0, "top_k", f"must be >= 0 (0 turns it off), got {self.top_k}")
        _require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 turns it off), got {self.top_p}")
        _require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


@dataclass
class Samples:
    """N = P * K completions of P prompts, prompt-major: sample j of prompt i is at index i * K + j."""

    prompts: list[str]
    """The prompt of each sample, (N,)."""
    prompt_ids: list[list[int]]
    """Its tokens (``add_special_tokens=False``), (N,) lists."""
    completion_ids: list[list[int]]
    """Generated tokens, up to and including the EOS that ended the completion if one did; no padding."""
    completions: list[str]
    """``completion_ids`` decoded without special tokens (so without the EOS)."""
    num_samples_per_prompt: int
    """K."""

    @property
    def texts(self) -> list[str]:
        """Prompt + completion strings, (N,): what a reward scores."""
        return [prompt + completion for prompt, completion in zip(self.prompts, self.completions, strict=True)]


def _left_pad(prompt_ids: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask``, each ``(B, T)``, left-padded so every prompt ends at the last column."""
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)  # (B, T)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def _generation_kwargs(config: SamplingConfig, tokenizer) -> dict:
    """Every sampling parameter of ``model.generate``, explicit: transformers fills unset ones with defaults
    (top_k=50 among them), which would silently truncate the policy's distribution."""
    return {
        "do_sample": True,
        "num_beams": 1,
        "temperature": config.temperature,
        "top_k": config.top_k,  # 0: no TopKLogitsWarper at all
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "use_cache": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


@contextmanager
def _blank_generation_config(model: torch.nn.Module) -> Iterator[None]:
    """Hide the checkpoint's ``generation_config`` (e.g. a repetition_penalty or min_length from its
    generation_config.json), whose settings ``generate`` would otherwise apply to every unset parameter."""
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def _completion(new_tokens: list[int], eos_token_id: int) -> list[int]:
    """Generated tokens up to and including the first EOS (finished rows are padded after it)."""
    return new_tokens[: new_tokens.index(eos_token_id) + 1] if eos_token_id in new_tokens else new_tokens


def sample(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    config: SamplingConfig,
    num_samples_per_prompt: int = 1,
    progress_bar: bool = True,
) -> Samples:
    """Draw ``num_samples_per_prompt`` (K) completions of each of the P prompts: ``Samples`` of N = P * K.

    Batches of ``config.batch_size`` sequences are left-padded and generated with the KV cache. Left
    padding does not shift the distribution: ``generate`` derives position ids from the attention mask
    (cumsum - 1), so a padded prompt gets the same positions, hence logits, as the prompt alone (tested).
    Every sampling parameter is passed to ``generate`` and the checkpoint's generation config is hidden,
    so with the default config each token is drawn from the policy's softmax (pure ancestral sampling:
    transformers would otherwise add top_k=50). Generation stops at ``tokenizer.eos_token_id``.

    The model runs in eval mode under no_grad (its mode is restored afterwards), on its own device.
    Batch b is seeded from ``config.seed`` and b inside ``torch.random.fork_rng``, so the same model,
    prompts and config (batch size included) give the same samples and the caller's RNG is untouched.
    """
    if num_samples_per_prompt < 1:
        raise ValueError(f"num_samples_per_prompt must be >= 1, got {num_samples_per_prompt}")
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs pad_token_id and eos_token_id (GPT-2: both '<|endoftext|>')")
    prompt_ids = [list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) for prompt in prompts]
    empty = [index for index, ids in enumerate(prompt_ids) if not ids]
    if empty:
        raise ValueError(f"prompts {empty[:10]} have no tokens; each needs at least one to condition on")
    longest = max((len(ids) for ids in prompt_ids), default=0) + config.max_new_tokens
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"the longest prompt plus max_new_tokens={config.max_new_tokens} is {longest} tokens, more than the "
            f"model's {max_positions} positions; lower max_new_tokens or shorten the prompts"
        )

    flat_prompts = [prompt for prompt in prompts for _ in range(num_samples_per_prompt)]  # (N,), prompt-major
    flat_ids = [list(ids) for ids in prompt_ids for _ in range(num_samples_per_prompt)]
    starts = range(0, len(flat_ids), config.batch_size)
    batch_seeds = torch.randint(2**62, (len(starts),), generator=torch.Generator().manual_seed(config.seed)).tolist()
    kwargs = _generation_kwargs(config, tokenizer)
    device = model.device
    rng_devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    completion_ids = []
    try:
        with torch.no_grad(), _blank_generation_config(model):
            for start, batch_seed in tqdm(
                list(zip(starts, batch_seeds, strict=True)), desc="sampling", unit="batch", disable=not progress_bar
            ):
                input_ids, attention_mask = _left_pad(
                    flat_ids[start : start + config.batch_size], kwargs["pad_token_id"]
                )
                with torch.random.fork_rng(devices=rng_devices):
                    torch.manual_seed(batch_seed)
                    output = model.generate(
                        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs
                    )  # (B, T + new tokens)
                for row in output[:, input_ids.shape[1] :].tolist():
                    completion_ids.append(_completion(row, tokenizer.eos_token_id))
    finally:
        model.train(was_training)
    completions = [
        tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) for ids in completion_ids
    ]
    return Samples(flat_prompts, flat_ids, completion_ids, completions, num_samples_per_prompt)
