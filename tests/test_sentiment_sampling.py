"""Prompts and sampling of the sentiment task: prefixes, reproducibility, layout, left padding, the softmax."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GenerationConfig

from dpo_teach.sampling import Samples, SamplingConfig, _generation_kwargs, sample
from dpo_teach.sentiment.prompts import make_prompts

PROMPTS = ["The movie", "This film was great and I", "The"]
REVIEWS = [
    f"{subject} {verb} {adjective}, and {ending}"
    for subject in ("The movie", "This film", "Honestly, the plot", "The café scene")
    for verb in ("was", "felt")
    for adjective in ("great", "dull", "très moving")
    for ending in ("I loved it.", "I hated every minute of it!")
]


def _token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_heavy(model: torch.nn.Module, tokenizer, boost: float = 5.0) -> torch.nn.Module:
    """Raise the EOS logit at every position by about ``boost`` (through ln_f's bias, since GPT-2's head is tied to
    the embeddings and has no bias), so that some samples end with EOS and others reach max_new_tokens."""
    with torch.no_grad():
        eos_embedding = model.transformer.wte.weight[tokenizer.eos_token_id]  # (D,)
        model.transformer.ln_f.bias.add_(boost * eos_embedding / eos_embedding.square().sum())
    return model


def test_make_prompts_are_short_prefixes_and_deterministic(tiny_tokenizer):
    texts = REVIEWS
    prompts = make_prompts(texts, tiny_tokenizer, seed=0)
    assert prompts == make_prompts(texts, tiny_tokenizer, seed=0)
    assert prompts != make_prompts(texts, tiny_tokenizer, seed=1)
    assert 0 < len(prompts) <= len(texts)
    lengths = [len(_token_ids(tiny_tokenizer, prompt)) for prompt in prompts]
    assert all(2 <= length <= 8 for length in lengths)
    assert len(set(lengths)) > 3  # n really varies
    assert all(any(text.startswith(prompt) and text != prompt for text in texts) for prompt in prompts)


def test_make_prompts_skips_texts_too_short_for_a_proper_prefix(tiny_tokenizer):
    long_text = "The movie was great and I loved it."
    short_text = tiny_tokenizer.decode(_token_ids(tiny_tokenizer, long_text)[:3])  # exactly 3 tokens
    assert len(_token_ids(tiny_tokenizer, short_text)) == 3
    prompts = make_prompts([short_text, long_text], tiny_tokenizer, min_tokens=3, max_tokens=3)
    assert prompts == [short_text]  # the long text's 3-token prefix; the short text is all prefix, skipped
    with pytest.raises(ValueError, match="min_tokens"):
        make_prompts([long_text], tiny_tokenizer, min_tokens=5, max_tokens=4)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_new_tokens", 0), ("temperature", 0.0), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("batch_size", 0)],
)
def test_sampling_config_checks_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        SamplingConfig(**{field: value})


def test_sample_is_reproducible_per_seed_and_leaves_global_rng_alone(tiny_tokenizer, make_tiny_gpt2):
    model = make_tiny_gpt2(0)
    config = SamplingConfig(max_new_tokens=6, batch_size=5, seed=3)  # 12 sequences: 3 batches
    rng_state = torch.get_rng_state()
    first = sample(model, tiny_tokenizer, PROMPTS, config, num_samples_per_prompt=4, progress_bar=False)
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert model.training  # mode restored
    again = sample(model, tiny_tokenizer, PROMPTS, config, num_samples_per_prompt=4, progress_bar=False)
    assert again == first
    config.seed = 4
    other = sample(model, tiny_tokenizer, PROMPTS, config, num_samples_per_prompt=4, progress_bar=False)
    assert other.completion_ids != first.completion_ids


def test_samples_layout_is_prompt_major_and_completions_stop_at_eos(tiny_tokenizer, make_tiny_gpt2):
    model = _eos_heavy(make_tiny_gpt2(1), tiny_tokenizer)
    eos, max_new_tokens, num_samples_per_prompt = tiny_tokenizer.eos_token_id, 8, 5
    config = SamplingConfig(max_new_tokens=max_new_tokens, batch_size=4)
    samples = sample(model, tiny_tokenizer, PROMPTS, config, num_samples_per_prompt, progress_bar=False)

    assert isinstance(samples, Samples) and samples.num_samples_per_prompt == num_samples_per_prompt
    size = len(PROMPTS) * num_samples_per_prompt
    assert len(samples.prompts) == len(samples.prompt_ids) == len(samples.completion_ids) == len(samples.completions)
    assert len(samples.prompts) == size
    for index in range(size):
        prompt = PROMPTS[index // num_samples_per_prompt]  # sample j of prompt i sits at i * K + j
        assert samples.prompts[index] == prompt
        assert samples.prompt_ids[index] == _token_ids(tiny_tokenizer, prompt)
        ids = samples.completion_ids[index]
        assert 0 < len(ids) <= max_new_tokens
        assert eos not in ids[:-1]  # EOS only ever ends a completion; no padding after it
        assert ids[-1] == eos or len(ids) == max_new_tokens
        assert samples.ended[index] == (ids[-1] == eos)  # cut at max_new_tokens: not ended
        assert samples.completions[index] == tiny_tokenizer.decode(ids, skip_special_tokens=True)
        assert samples.texts[index] == prompt + samples.completions[index]
    ended_by_eos = sum(ids[-1] == eos for ids in samples.completion_ids)
    assert 0 < ended_by_eos < size  # both ways of ending are exercised


def test_sample_rejects_empty_prompts_and_too_long_generations(tiny_tokenizer, make_tiny_gpt2):
    model = make_tiny_gpt2(0)
    with pytest.raises(ValueError, match="no tokens"):
        sample(model, tiny_tokenizer, ["The movie", ""], SamplingConfig(), progress_bar=False)
    with pytest.raises(ValueError, match="positions"):  # the tiny GPT-2 has 64
        sample(model, tiny_tokenizer, ["The movie"], SamplingConfig(max_new_tokens=64), progress_bar=False)


def test_left_padding_leaves_next_token_logits_unchanged(tiny_tokenizer, make_tiny_gpt2):
    """generate() derives position ids from the attention mask, so a left-padded prompt in a batch gets the
    logits of the prompt alone: at the first step and, through the KV cache, at every later one."""
    model = make_tiny_gpt2(0).eval()
    prompt_ids = [_token_ids(tiny_tokenizer, prompt) for prompt in PROMPTS]
    padded = tiny_tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt")  # as sample pads
    input_ids, attention_mask = padded["input_ids"], padded["attention_mask"]  # (3, T)
    assert attention_mask.sum(dim=1).tolist() == [len(ids) for ids in prompt_ids]
    kwargs = _generation_kwargs(SamplingConfig(max_new_tokens=1), tiny_tokenizer)
    greedy = {"do_sample": False, "max_new_tokens": 5, "pad_token_id": tiny_tokenizer.pad_token_id}
    with torch.no_grad():
        sampled = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
        batch = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_logits=True,
            return_dict_in_generate=True,
            **greedy,
        )
        for row, ids in enumerate(prompt_ids):
            alone_logits = model(torch.tensor([ids])).logits[0, -1]  # (V,)
            torch.testing.assert_close(sampled.logits[0][row], alone_logits, atol=1e-5, rtol=0)
            alone = model.generate(
                input_ids=torch.tensor([ids]), output_logits=True, return_dict_in_generate=True, **greedy
            )
            for step in range(5):
                torch.testing.assert_close(batch.logits[step][row], alone.logits[step][0], atol=1e-5, rtol=0)
        # Control: a plain forward pass of the padded batch counts positions from the padding, and differs
        padded_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[0, -1]
        assert not torch.allclose(padded_logits, model(torch.tensor([prompt_ids[0]])).logits[0, -1], atol=1e-3)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor, total: int) -> tuple[float, int]:
    """Pearson's statistic over the tokens expected >= 5 times, the rest pooled into one bin; and its df."""
    expected = total * probs  # (V,)
    frequent = expected >= 5
    observed_bins = torch.cat([counts[frequent], counts[~frequent].sum(dim=0, keepdim=True)])
    expected_bins = torch.cat([expected[frequent], expected[~frequent].sum(dim=0, keepdim=True)])
    return ((observed_bins - expected_bins).square() / expected_bins).sum().item(), len(expected_bins) - 1


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper 0.1% point of chi-square(df) by the Wilson-Hilferty approximation (z = 3.09 is the normal's)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_default_config_samples_the_policy_softmax(tiny_tokenizer, make_tiny_gpt2):
    """With temperature 1, top_k 0 and top_p 1, the first sampled token follows softmax(logits), even when the
    checkpoint's generation_config asks for top_k, temperature, a repetition penalty and a suppressed token.

    2000 one-token samples; Pearson's chi-square must stay under its 0.1% critical value (a deterministic test:
    the sampler is seeded). The logits are sharpened (ln_f scaled by 15) so ~45 tokens are expected >= 5 times
    and a truncated or tempered sampler is far off, as the top_k=3 control shows.
    """
    model = make_tiny_gpt2(0).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(15.0)
        prompt_ids = _token_ids(tiny_tokenizer, "The movie")
        probs = model(torch.tensor([prompt_ids])).logits[0, -1].double().softmax(dim=-1)  # (V,)
    checkpoint_config = GenerationConfig(
        do_sample=True, top_k=3, temperature=0.3, repetition_penalty=5.0, suppress_tokens=[int(probs.argmax())]
    )
    model.generation_config = checkpoint_config
    total = 2000

    def statistic(config: SamplingConfig) -> tuple[float, int]:
        samples = sample(model, tiny_tokenizer, ["The movie"], config, num_samples_per_prompt=total, progress_bar=False)
        first_tokens = torch.tensor([ids[0] for ids in samples.completion_ids])  # (total,)
        counts = torch.bincount(first_tokens, minlength=len(probs)).double()  # (V,)
        return _chi_square(counts, probs, total)

    chi_square, df = statistic(SamplingConfig(max_new_tokens=1, batch_size=500))
    assert model.generation_config is checkpoint_config  # restored
    assert df > 20
    assert chi_square < _chi_square_critical(df), (chi_square, df)
    truncated, _ = statistic(SamplingConfig(max_new_tokens=1, batch_size=500, top_k=3))
    assert truncated > 10 * _chi_square_critical(df)
