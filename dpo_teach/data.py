"""From text examples to training batches: loading, validation, tokenization, collation.

A preference example is ``{"prompt": str, "chosen": str, "rejected": str}`` (TRL's standard
format; ``chosen`` is y_w and ``rejected`` is y_l in the notebooks' math). An SFT example is
``{"prompt": str, "completion": str}``, or ``{"text": str}`` when the loss covers every token.

The pipeline has three steps, each a plain function:

1. :func:`load_examples` reads a list, a JSONL file or a ``datasets.Dataset`` and validates it;
   bad rows raise :class:`DataError`, naming source, row, field and what would be accepted.
2. :func:`tokenize_preference` / :func:`tokenize_sft` turn one example into lists of token ids.
   Prompt and completion are tokenized separately, so the boundary between them is exact.
3. :func:`collate_preference` / :func:`collate_sft` pad a list of tokenized examples into tensors,
   with ``labels = -100`` wherever the loss must not look (prompt and padding).

Padding is located by position (each row's length), never by comparing token ids with the pad
id: with GPT-2 the pad token *is* the EOS token, and masking ``input_ids == pad_token_id`` would
silently drop the EOS label the model must learn to emit.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from dpo_teach.errors import DataError

if TYPE_CHECKING:
    import datasets

IGNORE_INDEX = -100
"""Label of positions the loss ignores (prompt and padding); PyTorch's cross-entropy default. ``dpo_teach.logprobs``
scores no negative label."""

FIELDS = {"preference": ("prompt", "chosen", "rejected"), "sft": ("prompt", "completion")}
EXPECTED = {
    "preference": 'a dict {"prompt": str, "chosen": str, "rejected": str}',
    "sft": 'a dict {"prompt": str, "completion": str} or {"text": str}',
}
TRUNCATION_MODES = ("keep_end", "keep_start")
ENDED_FIELDS = {"preference": ("chosen_ended", "rejected_ended"), "sft": ("completion_ended",)}
"""Optional booleans: False for a completion cut at a length limit, which then gets no EOS (default True)."""


def _where(source_name: str, row: int, line: int | None) -> str:
    return f"{source_name}, row {row}" + (f" (line {line})" if line is not None else "")


def _rows(source: list[dict] | str | Path | datasets.Dataset) -> tuple[str, Iterator[tuple[Any, int | None]]]:
    """The source's name and its rows as ``(example, line)``; a line that is not UTF-8 or not JSON yields its
    decode error. A UTF-8 byte-order mark at the start of a JSONL file is skipped."""
    if isinstance(source, str | Path) and Path(source).is_dir():  # written by datasets' save_to_disk
        import datasets

        try:
            dataset = datasets.load_from_disk(str(source))
        except FileNotFoundError as error:
            raise DataError(f"{source}: {error}; expected a JSONL file or a save_to_disk directory") from None
        return str(source), ((row, None) for row in dataset)
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"{path}: no such file; expected a JSONL file or a save_to_disk directory")

        def read_lines() -> Iterator[tuple[Any, int | None]]:
            with path.open("rb") as file:
                for line_number, raw in enumerate(file, start=1):
                    try:
                        line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
                    except UnicodeDecodeError as error:
                        yield error, line_number
                        continue
                    if line.strip():
                        try:
                            yield json.loads(line), line_number
                        except json.JSONDecodeError as error:
                            yield error, line_number

        return str(path), read_lines()
    if isinstance(source, list):
        return "list", ((row, None) for row in source)
    import datasets

    if isinstance(source, datasets.Dataset):
        return "dataset", ((row, None) for row in source)
    raise TypeError(
        "source must be a list of dicts, a path to a JSONL file or a datasets.Dataset "
        f"(for a DatasetDict pick a split, e.g. dataset['train']); got {type(source).__name__}"
    )


def _problem(example: Any, kind: str) -> tuple[str | None, str] | None:
    """``(field, what is wrong and what is accepted)`` for an invalid example, else ``None``."""
    if isinstance(example, UnicodeDecodeError):
        byte = example.object[example.start]
        return None, f"not UTF-8 (byte 0x{byte:02x} at byte {example.start + 1} of the line); save the file as UTF-8"
    if isinstance(example, json.JSONDecodeError):
        return None, f"malformed JSON ({example.msg} at column {example.colno}); expected one JSON object per line"
    if not isinstance(example, dict):
        return None, f"got a {type(example).__name__}, expected {EXPECTED[kind]}"
    is_text = kind == "sft" and "text" in example and "prompt" not in example and "completion" not in example
    fields = ("text",) if is_text else FIELDS[kind]
    for field in fields:
        if field not in example:
            return field, f"missing; expected {EXPECTED[kind]}, found keys {sorted(example)}"
        if not isinstance(example[field], str):
            return field, f"is a {type(example[field]).__name__}, expected a str"
        if field != "prompt" and not example[field].strip():
            return field, "is empty or whitespace only; expected a non-empty completion"
    for field in ENDED_FIELDS[kind]:
        if field in example and not isinstance(example[field], bool):
            return field, (
                f"is {example[field]!r}; expected true or false (whether the completion ended with EOS), or no such key"
            )
    if kind == "preference" and example["chosen"] == example["rejected"]:
        return "rejected", "is identical to chosen; a preference pair needs two different completions"
    return None


def load_examples(
    source: list[dict] | str | Path | datasets.Dataset,
    kind: str = "preference",
    *,
    skip_invalid: bool = False,
) -> tuple[list[dict], int]:
    """Read and validate examples; returns ``(valid examples, number skipped)``.

    ``source`` is a list of dicts, a path to a JSONL file (one JSON object per line; blank lines
    are ignored), a directory written by ``Dataset.save_to_disk``, or a ``datasets.Dataset``.
    ``kind`` is ``"preference"`` or ``"sft"``. A row is
    invalid when a field is missing or not a string, a completion is empty or whitespace only,
    ``chosen == rejected``, or a JSONL line is not UTF-8 or not valid JSON (a UTF-8 byte-order mark
    at the start of the file is accepted). Invalid rows raise :class:`DataError`, or with
    ``skip_invalid=True`` are counted and reported in one warning. Rows are 0-based among examples;
    JSONL line numbers are 1-based. A long prompt is not invalid: tokenization truncates it.
    """
    if kind not in FIELDS:
        raise ValueError(f"kind must be one of {sorted(FIELDS)}, got {kind!r}")
    source_name, rows = _rows(source)
    examples, reasons = [], []
    for row, (example, line) in enumerate(rows):
        problem = _problem(example, kind)
        if problem is None:
            examples.append(dict(example))
            continue
        field, message = problem
        reason = _where(source_name, row, line) + (f", field {field!r}" if field else "") + f": {message}"
        if not skip_invalid:
            raise DataError(reason)
        reasons.append(reason)
    if reasons:
        first = "\n  ".join(reasons[:3])
        message = f"skipped {len(reasons)} invalid examples from {source_name}; first reasons:\n  {first}"
        warnings.warn(message, stacklevel=2)
    return examples, len(reasons)


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_token_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; set tokenizer.eos_token (GPT-2: '<|endoftext|>')")
    return tokenizer.eos_token_id


def _ending(token_ids: list[int], ended: bool, eos: int) -> list[int]:
    """A completion's tokens with the EOS that ends it: appended if it ended and does not already end with one."""
    return token_ids + [eos] if ended and token_ids[-1:] != [eos] else token_ids


def _truncate(
    prompt: list[int],
    completions: list[list[int]],
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str,
) -> tuple[list[int], list[list[int]]]:
    """The DPO authors' rule: shorten the prompt first, then the completions (keeping their start)."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"need 0 < max_prompt_length < max_length, got max_prompt_length={max_prompt_length}, "
            f"max_length={max_length}"
        )
    longest = max(len(completion) for completion in completions)
    if len(prompt) + longest > max_length:
        prompt = prompt[-max_prompt_length:] if truncation_mode == "keep_end" else prompt[:max_prompt_length]
    if len(prompt) + longest > max_length:
        completions = [completion[: max_length - len(prompt)] for completion in completions]
    return prompt, completions


def tokenize_preference(
    example: dict,
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
) -> dict[str, list[int]]:
    """Token ids of one preference example: ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``.

    Prompt, chosen and rejected are tokenized separately with ``add_special_tokens=False``, so no
    BPE merge crosses the prompt/completion boundary (a completion should carry its own leading
    space), and ``tokenizer.eos_token_id`` is appended to each completion that ended: all of them,
    unless the example says ``chosen_ended`` / ``rejected_ended`` is False (a sample cut at its length
    limit, ``dpo_teach.sampling.Samples.ended``: an EOS there would teach the policy to stop where the
    text did not stop). A completion whose text already ends with the EOS token gets no second one.

    Truncation follows the DPO authors' code: when ``len(prompt) + max(len(chosen), len(rejected))``
    exceeds ``max_length``, the prompt is cut to ``max_prompt_length`` tokens (``"keep_end"`` keeps
    its last tokens, right for continuations; ``"keep_start"`` its first); if still too long, both
    completions are cut to ``max_length - len(prompt)`` tokens, keeping their start. EOS is appended
    *before* truncation, so a truncated completion loses its EOS, as in the authors' code: the
    model is not taught to stop where the text did not stop. Every completion keeps at least one
    token because ``max_prompt_length < max_length``. With an empty prompt the first completion
    token has no context and is not scored by a causal LM.
    """
    eos = _eos_token_id(tokenizer)
    prompt = _token_ids(tokenizer, example["prompt"])
    chosen = _ending(_token_ids(tokenizer, example["chosen"]), example.get("chosen_ended", True), eos)
    rejected = _ending(_token_ids(tokenizer, example["rejected"]), example.get("rejected_ended", True), eos)
    prompt, (chosen, rejected) = _truncate(prompt, [chosen, rejected], max_length, max_prompt_length, truncation_mode)
    return {"prompt_input_ids": prompt, "chosen_input_ids": chosen, "rejected_input_ids": rejected}


def tokenize_sft(
    example: dict,
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
) -> dict[str, list[int]]:
    """Token ids and labels of one SFT example: ``input_ids`` and ``labels``, equal lengths.

    ``{"prompt", "completion"}``: tokenized and truncated as in :func:`tokenize_preference` (one
    completion, EOS appended unless ``completion_ended`` is False, lost if the completion is truncated);
    ``labels`` are ``-100`` on the
    prompt. ``{"text"}``: the whole text plus EOS, cut to its first ``max_length`` tokens, every
    position a label (``max_prompt_length`` and ``truncation_mode`` are then unused).
    """
    eos = _eos_token_id(tokenizer)
    if "completion" not in example:
        input_ids = _ending(_token_ids(tokenizer, example["text"]), True, eos)[:max_length]
        return {"input_ids": input_ids, "labels": list(input_ids)}
    prompt = _token_ids(tokenizer, example["prompt"])
    completion = _ending(_token_ids(tokenizer, example["completion"]), example.get("completion_ended", True), eos)
    prompt, (completion,) = _truncate(prompt, [completion], max_length, max_prompt_length, truncation_mode)
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}


def tokenize_all(
    examples: Sequence[dict],
    tokenize: Callable[..., dict],
    description: str = "tokenizing",
    progress_bar: bool = True,
    **kwargs: Any,
) -> list[dict]:
    """``[tokenize(example, **kwargs) for example in examples]`` with a progress bar."""
    return [tokenize(example, **kwargs) for example in tqdm(examples, desc=description, disable=not progress_bar)]


def load_and_tokenize(
    source: list[dict] | str | Path | datasets.Dataset | None,
    kind: str,
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
    *,
    skip_invalid: bool = False,
    progress_bar: bool = True,
) -> tuple[list[dict], int]:
    """Steps 1 and 2 for a whole source: ``(validated, tokenized examples of kind, how many prompts were
    truncated)``; ``([], 0)`` when no source is given (``None`` or an empty path).

    A prompt too long for its example to fit ``max_length`` is cut to ``max_prompt_length`` tokens by
    ``truncation_mode`` (:func:`tokenize_preference`), never refused; the count lets the caller say so.
    """
    if source is None or (isinstance(source, str) and not source):
        return [], 0
    examples, _ = load_examples(source, kind, skip_invalid=skip_invalid)
    spaced = sum(1 for example in examples if example.get("prompt", "")[-1:].isspace())
    if spaced:
        warnings.warn(
            f"{spaced} of {len(examples)} prompts end with whitespace; prompt and completion are tokenized apart, so "
            "that space becomes a token of its own where the model saw it merged into the completion's first word. "
            "Move trailing spaces to the completions",
            stacklevel=2,
        )
    tokenize = tokenize_preference if kind == "preference" else tokenize_sft
    tokenized = tokenize_all(
        examples,
        tokenize,
        f"tokenizing {kind} examples",
        progress_bar,
        tokenizer=tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
    )
    truncated = sum(
        _prompt_length(tokens) < len(_token_ids(tokenizer, example["prompt"]))
        for example, tokens in zip(examples, tokenized, strict=True)
        if "prompt" in example
    )
    return tokenized, truncated


def _prompt_length(tokens: dict[str, list[int]]) -> int:
    """Prompt tokens of a tokenized example: its ``prompt_input_ids``, or an SFT example's leading ignored labels."""
    if "prompt_input_ids" in tokens:
        return len(tokens["prompt_input_ids"])
    return next((index for index, label in enumerate(tokens["labels"]) if label != IGNORE_INDEX), len(tokens["labels"]))


def pad_sequences(sequences: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    """Rows of different lengths as one ``(N, T)`` long tensor, T the longest, filled with ``value``.

    ``side="right"`` puts each row at the start (training batches, scored by position), ``"left"`` at the end
    (prompts that generation or a rollout continues). Every padded tensor of the toolkit is made here.
    """
    if not sequences:
        raise ValueError("cannot collate an empty list of examples")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(sequence) for sequence in sequences)
    padded = torch.full((len(sequences), width), value, dtype=torch.long)  # (N, T)
    for row, sequence in enumerate(sequences):
        if sequence:
            columns = slice(0, len(sequence)) if side == "right" else slice(width - len(sequence), width)
            padded[row, columns] = torch.tensor(sequence, dtype=torch.long)
    return padded


def _pad(sequences: list[list[int]], labels: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest: padding gets ``attention_mask = 0`` and ``labels = -100`` by position."""
    return {
        "input_ids": pad_sequences(sequences, pad_token_id),  # (N, T)
        "attention_mask": pad_sequences([[1] * len(sequence) for sequence in sequences], 0),  # (N, T)
        "labels": pad_sequences(labels, IGNORE_INDEX),  # (N, T)
    }


def collate_preference(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One concatenated, right-padded batch of B tokenized preference examples (from :func:`tokenize_preference`).

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``(2B, T)`` long, T the longest
    row: rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1`` prompt + rejected, so one forward
    pass scores both. ``labels`` equal ``input_ids`` on completion tokens (EOS included) and are
    -100 on prompt and padding, found by position, so the EOS label survives when pad == EOS.
    """
    sequences, labels = [], []
    for completion in ("chosen_input_ids", "rejected_input_ids"):
        for example in examples:
            prompt = example["prompt_input_ids"]
            sequences.append(prompt + example[completion])
            labels.append([IGNORE_INDEX] * len(prompt) + example[completion])
    return _pad(sequences, labels, pad_token_id)


def collate_sft(examples: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch of B tokenized SFT examples (from :func:`tokenize_sft`).

    Returns ``input_ids``, ``attention_mask`` and ``labels``, each ``(B, T)`` long, T the longest
    row; padding is found by position (``attention_mask = 0``, ``labels = -100``), never by token id.
    """
    input_ids = [example["input_ids"] for example in examples]
    return _pad(input_ids, [example["labels"] for example in examples], pad_token_id)


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Move every tensor of ``batch`` to ``device``."""
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
