"""Ancestral sampling from a causal language model, seeded by its own generator.

``sample`` draws K completions of each prompt; every sample records whether it ended with EOS or was cut
at ``max_new_tokens``. With the default :class:`SamplingConfig` the samples are *pure ancestral samples*:
each token is drawn from the policy's own softmax, y_t ~ pi(. | x, y_<t), with no temperature, top-k or
top-p. The KL estimates of an evaluation (``dpo_teach.sentiment.evaluate``) are unbiased only for such
samples, and PPO's rollouts (``dpo_teach.train.ppo``) are drawn the same way. Notebook 5 walks through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from dpo_teach.errors import require


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
        require(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.top_k >= 0, "top_k", f"must be >= 0 (0 turns it off), got {self.top_k}")
        require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1] (1 turns it off), got {self.top_p}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


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
    ended: list[bool]
    """Whether each completion ended with EOS (True) or was cut at ``max_new_tokens`` (False): only an ended
    completion teaches a policy where to stop (``dpo_teach.data.tokenize_preference``)."""
    num_samples_per_prompt: int
    """K."""

    @property
    def texts(self) -> list[str]:
        """Prompt + completion strings, (N,): what a reward scores."""
        return [prompt + completion for prompt, completion in zip(self.prompts, self.completions, strict=True)]


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
                padded = tokenizer.pad(
                    {"input_ids": flat_ids[start : start + config.batch_size]}, padding_side="left", return_tensors="pt"
                )  # every prompt ends at the last column
                input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]  # (B, T) each
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
    ended = [bool(ids) and ids[-1] == tokenizer.eos_token_id for ids in completion_ids]
    return Samples(flat_prompts, flat_ids, completion_ids, completions, ended, num_samples_per_prompt)
