"""dpo_teach.data: loading and validation, separate tokenization, truncation, collation and masking."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from dpo_teach.data import (
    IGNORE_INDEX,
    DataError,
    collate_preference,
    collate_sft,
    load_and_tokenize,
    load_examples,
    tokenize_all,
    tokenize_preference,
    tokenize_sft,
)

GOOD = {"prompt": "The movie", "chosen": " was great.", "rejected": " was dull."}


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- loading and validation -------------------------------------------------------------------


def test_list_jsonl_and_dataset_sources_give_the_same_examples(tiny_pairs, tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [json.dumps(pair) for pair in tiny_pairs])
    from_list = load_examples(tiny_pairs)
    from_str_path = load_examples(str(path))
    from_path = load_examples(path)
    from_dataset = load_examples(datasets.Dataset.from_list(tiny_pairs))
    datasets.Dataset.from_list(tiny_pairs).save_to_disk(tmp_path / "saved")
    from_saved = load_examples(tmp_path / "saved")
    assert from_list == from_str_path == from_path == from_dataset == from_saved == (tiny_pairs, 0)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file; expected a JSONL file"):
        load_examples(tmp_path / "missing.jsonl")


def test_sft_examples_accept_prompt_completion_and_text():
    examples = [{"prompt": "The movie", "completion": " was great."}, {"text": "The movie was great."}]
    assert load_examples(examples, kind="sft") == (examples, 0)


@pytest.mark.parametrize(
    ("example", "field", "fragment"),
    [
        ({"prompt": "x", "chosen": " a"}, "rejected", "missing"),
        ({"prompt": "x", "chosen": 3, "rejected": " b"}, "chosen", "is a int, expected a str"),
        ({"prompt": None, "chosen": " a", "rejected": " b"}, "prompt", "is a NoneType"),
        ({"prompt": "x", "chosen": "", "rejected": " b"}, "chosen", "empty or whitespace"),
        ({"prompt": "x", "chosen": " a", "rejected": " \n\t"}, "rejected", "empty or whitespace"),
        ({"prompt": "x", "chosen": " same", "rejected": " same"}, "rejected", "identical to chosen"),
    ],
)
def test_invalid_preference_rows_name_source_row_and_field(example, field, fragment):
    with pytest.raises(DataError) as raised:
        load_examples([GOOD, GOOD, example])
    message = str(raised.value)
    assert message.startswith(f"list, row 2, field '{field}': ")
    assert fragment in message
    assert isinstance(raised.value, ValueError)


def test_missing_field_message_says_what_is_accepted():
    with pytest.raises(DataError, match=r"row 0, field 'chosen': missing; expected a dict \{\"prompt\": str"):
        load_examples([{"prompt": "x", "answer": " a", "rejected": " b"}])
    expected = r"field 'completion': missing; .*or \{\"text\": str\}.*found keys \['prompt'\]"
    with pytest.raises(DataError, match=expected):
        load_examples([{"prompt": "x"}], kind="sft")


def test_sft_text_and_completion_must_not_be_empty():
    with pytest.raises(DataError, match=r"dataset, row 0, field 'text': is empty"):
        load_examples(datasets.Dataset.from_list([{"text": "  "}]), kind="sft")
    with pytest.raises(DataError, match=r"list, row 1, field 'completion': is empty"):
        load_examples([{"prompt": "a", "completion": " b"}, {"prompt": "a", "completion": ""}], kind="sft")


def test_a_row_that_is_not_a_dict_is_rejected():
    with pytest.raises(DataError, match=r"^list, row 1: got a str, expected a dict"):
        load_examples([GOOD, "The movie was great."])


def test_jsonl_errors_name_the_file_row_and_line(tmp_path):
    lines = [json.dumps(GOOD), "", json.dumps({**GOOD, "chosen": " "})]  # line 2 is blank: row 1 is line 3
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as raised:
        load_examples(path)
    assert str(raised.value).startswith(f"{path}, row 1 (line 3), field 'chosen': is empty or whitespace only")


def test_malformed_json_names_file_row_and_line(tmp_path):
    path = write_jsonl(tmp_path / "broken.jsonl", [json.dumps(GOOD), json.dumps(GOOD), '{"prompt": "x", "chosen"'])
    with pytest.raises(DataError, match=r"broken\.jsonl, row 2 \(line 3\): malformed JSON .*one JSON object per line"):
        load_examples(path)


def test_skip_invalid_counts_and_warns_with_the_first_reasons(tmp_path):
    lines = [json.dumps(GOOD), "not json", json.dumps({"prompt": "x"}), json.dumps(GOOD), json.dumps([1, 2])]
    path = write_jsonl(tmp_path / "mixed.jsonl", lines)
    with pytest.warns(UserWarning, match=r"skipped 3 invalid examples from .*mixed\.jsonl") as caught:
        examples, skipped = load_examples(path, skip_invalid=True)
    assert (examples, skipped) == ([GOOD, GOOD], 3)
    warning = str(caught[0].message)
    assert "row 1 (line 2): malformed JSON" in warning
    assert "row 2 (line 3), field 'chosen': missing" in warning


def test_bad_kind_or_source_type_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        load_examples([GOOD], kind="pairs")
    with pytest.raises(TypeError, match="DatasetDict pick a split"):
        load_examples(datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD])}))


# --- tokenization -----------------------------------------------------------------------------


def test_prompt_and_completions_are_tokenized_separately_with_eos(tiny_tokenizer, tiny_pairs):
    eos = tiny_tokenizer.eos_token_id
    for example in tiny_pairs[:5]:
        tokens = tokenize_preference(example, tiny_tokenizer, max_length=64, max_prompt_length=32)
        assert tokens == {
            "prompt_input_ids": ids(tiny_tokenizer, example["prompt"]),
            "chosen_input_ids": ids(tiny_tokenizer, example["chosen"]) + [eos],
            "rejected_input_ids": ids(tiny_tokenizer, example["rejected"]) + [eos],
        }
        assert all(isinstance(token, int) for token in tokens["chosen_input_ids"])


def test_separate_tokenization_differs_from_joint_when_a_merge_would_cross_the_boundary(tiny_tokenizer):
    example = {"prompt": "The mo", "chosen": "vie was great.", "rejected": "vie was dull."}
    tokens = tokenize_preference(example, tiny_tokenizer, max_length=64, max_prompt_length=32)
    joint = ids(tiny_tokenizer, "The movie was great.")
    assert tokens["prompt_input_ids"] + tokens["chosen_input_ids"][:-1] != joint
    assert tiny_tokenizer.decode(tokens["prompt_input_ids"] + tokens["chosen_input_ids"][:-1]) == "The movie was great."


def long_example(tokenizer):
    prompt = " ".join(f"word{index}" for index in range(12))
    example = {"prompt": prompt, "chosen": " was great and I loved it. " * 3, "rejected": " was dull."}
    return example, ids(tokenizer, prompt), ids(tokenizer, example["chosen"]), ids(tokenizer, example["rejected"])


def test_truncation_keep_end_and_keep_start_cut_the_prompt_then_the_completions(tiny_tokenizer):
    example, prompt, chosen, rejected = long_example(tiny_tokenizer)
    max_length, max_prompt_length = 20, 8
    assert len(prompt) > max_prompt_length and len(chosen) + 1 > max_length - max_prompt_length
    keep_end = tokenize_preference(example, tiny_tokenizer, max_length, max_prompt_length, "keep_end")
    keep_start = tokenize_preference(example, tiny_tokenizer, max_length, max_prompt_length, "keep_start")
    assert keep_end["prompt_input_ids"] == prompt[-max_prompt_length:]
    assert keep_start["prompt_input_ids"] == prompt[:max_prompt_length]
    for tokens in (keep_end, keep_start):
        # the longer completion is cut to max_length - len(prompt), keeping its start, and loses its EOS
        assert tokens["chosen_input_ids"] == chosen[: max_length - max_prompt_length]
        assert tiny_tokenizer.eos_token_id not in tokens["chosen_input_ids"]
        # the shorter one fits and keeps its EOS
        assert tokens["rejected_input_ids"] == rejected + [tiny_tokenizer.eos_token_id]
        assert len(tokens["prompt_input_ids"]) + len(tokens["chosen_input_ids"]) == max_length


def test_prompt_is_only_cut_when_the_pair_does_not_fit(tiny_tokenizer):
    example, prompt, chosen, rejected = long_example(tiny_tokenizer)
    max_length = len(prompt) + len(chosen) + 1
    tokens = tokenize_preference(example, tiny_tokenizer, max_length, max_prompt_length=4)
    assert tokens["prompt_input_ids"] == prompt
    assert tokens["chosen_input_ids"] == chosen + [tiny_tokenizer.eos_token_id]


def test_truncation_arguments_are_checked(tiny_tokenizer):
    with pytest.raises(ValueError, match="truncation_mode must be one of"):
        tokenize_preference(GOOD, tiny_tokenizer, 16, 8, truncation_mode="left")
    with pytest.raises(ValueError, match="max_prompt_length < max_length"):
        tokenize_preference(GOOD, tiny_tokenizer, 16, 16)


def test_tokenize_sft_masks_the_prompt_and_labels_the_completion_and_eos(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    prompt, completion = ids(tiny_tokenizer, "The movie"), ids(tiny_tokenizer, " was great.")
    tokens = tokenize_sft({"prompt": "The movie", "completion": " was great."}, tiny_tokenizer, 64, 32)
    assert tokens == {
        "input_ids": prompt + completion + [eos],
        "labels": [IGNORE_INDEX] * len(prompt) + completion + [eos],
    }


def test_tokenize_sft_text_labels_every_token_and_truncates_keeping_the_start(tiny_tokenizer):
    text = "The movie was great and I loved it."
    text_ids = ids(tiny_tokenizer, text)
    whole = tokenize_sft({"text": text}, tiny_tokenizer, 64, 32)
    assert whole == {"input_ids": text_ids + [tiny_tokenizer.eos_token_id]} | {"labels": whole["input_ids"]}
    cut = tokenize_sft({"text": text}, tiny_tokenizer, 5, 2)
    assert cut["input_ids"] == cut["labels"] == text_ids[:5]


def test_tokenize_sft_prompt_completion_truncation_matches_preference(tiny_tokenizer):
    example, prompt, chosen, _ = long_example(tiny_tokenizer)
    sft_example = {"prompt": example["prompt"], "completion": example["chosen"]}
    tokens = tokenize_sft(sft_example, tiny_tokenizer, 20, 8, "keep_start")
    assert tokens["input_ids"] == prompt[:8] + chosen[:12]
    assert tokens["labels"] == [IGNORE_INDEX] * 8 + chosen[:12]


def test_eos_is_appended_only_where_the_completion_ended(tiny_tokenizer):
    """A completion cut at the sampling length (``chosen_ended``/``rejected_ended``/``completion_ended`` False) gets
    no EOS label; one that ended gets exactly one, also when its text already ends with the EOS token."""
    eos, eos_text = tiny_tokenizer.eos_token_id, tiny_tokenizer.eos_token
    pair = {**GOOD, "chosen_ended": False, "rejected_ended": True}
    tokens = tokenize_preference(pair, tiny_tokenizer, 64, 32)
    assert tokens["chosen_input_ids"] == ids(tiny_tokenizer, GOOD["chosen"])  # cut: no EOS
    assert tokens["rejected_input_ids"] == ids(tiny_tokenizer, GOOD["rejected"]) + [eos]  # ended: one EOS
    already = tokenize_preference({**GOOD, "chosen": GOOD["chosen"] + eos_text}, tiny_tokenizer, 64, 32)
    assert already["chosen_input_ids"].count(eos) == 1 and already["chosen_input_ids"][-1] == eos
    batch = collate_preference([tokens], tiny_tokenizer.pad_token_id)  # the labels a trainer sees
    chosen_labels, rejected_labels = batch["labels"][0].tolist(), batch["labels"][1].tolist()
    assert eos not in chosen_labels and rejected_labels.count(eos) == 1
    sft = tokenize_sft({"prompt": "The movie", "completion": " was", "completion_ended": False}, tiny_tokenizer, 64, 32)
    assert sft["input_ids"][-1] != eos and eos not in sft["labels"]


def test_prompts_ending_with_whitespace_are_counted_in_a_warning(tiny_tokenizer):
    examples = [GOOD, {**GOOD, "prompt": "The movie "}, {**GOOD, "prompt": "This film\n"}]
    with pytest.warns(UserWarning, match="2 of 3 prompts end with whitespace"):
        load_and_tokenize(examples, "preference", tiny_tokenizer, 64, 32, progress_bar=False)


def test_an_ending_flag_that_is_not_a_bool_is_named(tiny_tokenizer):
    with pytest.raises(DataError, match=r"row 0, field 'chosen_ended': is 'no'; expected true or false"):
        load_examples([{**GOOD, "chosen_ended": "no"}], "preference")


def test_tokenize_all_matches_a_loop(tiny_tokenizer, tiny_pairs):
    kwargs = {"tokenizer": tiny_tokenizer, "max_length": 32, "max_prompt_length": 16}
    expected = [tokenize_preference(example, **kwargs) for example in tiny_pairs]
    assert tokenize_all(tiny_pairs, tokenize_preference, **kwargs) == expected


# --- collation --------------------------------------------------------------------------------


@pytest.fixture
def tokenized(tiny_tokenizer, tiny_pairs) -> list[dict]:
    return [tokenize_preference(example, tiny_tokenizer, 32, 16) for example in tiny_pairs[:6]]


def test_collate_preference_layout_chosen_then_rejected_right_padded(tiny_tokenizer, tokenized):
    pad = tiny_tokenizer.pad_token_id
    batch = collate_preference(tokenized, pad)
    rows = [t["prompt_input_ids"] + t["chosen_input_ids"] for t in tokenized]
    rows += [t["prompt_input_ids"] + t["rejected_input_ids"] for t in tokenized]
    width = max(len(row) for row in rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for tensor in batch.values():
        assert tensor.shape == (2 * len(tokenized), width) and tensor.dtype == torch.long
    for index, row in enumerate(rows):  # naive loop as the reference
        padding = width - len(row)
        assert batch["input_ids"][index].tolist() == row + [pad] * padding
        assert batch["attention_mask"][index].tolist() == [1] * len(row) + [0] * padding


def test_labels_are_ignored_exactly_on_prompt_and_padding(tiny_tokenizer, tokenized):
    batch = collate_preference(tokenized, tiny_tokenizer.pad_token_id)
    size = len(tokenized)
    for index in range(2 * size):
        example = tokenized[index % size]
        completion = example["chosen_input_ids" if index < size else "rejected_input_ids"]
        start, end = len(example["prompt_input_ids"]), len(example["prompt_input_ids"]) + len(completion)
        labels = batch["labels"][index]
        assert (labels[:start] == IGNORE_INDEX).all() and (labels[end:] == IGNORE_INDEX).all()
        assert labels[start:end].tolist() == completion
        assert (labels[start:end] != IGNORE_INDEX).all()


def test_eos_label_survives_when_pad_equals_eos(tiny_tokenizer, tokenized):
    """The pitfall: masking ``input_ids == pad_token_id`` would erase the EOS the model must learn."""
    eos, pad = tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id
    assert pad == eos
    batch = collate_preference(tokenized, pad)
    lengths = batch["attention_mask"].sum(dim=1)  # (2B,)
    last_labels = batch["labels"][torch.arange(len(lengths)), lengths - 1]  # (2B,)
    assert (last_labels == eos).all()
    assert int(lengths.min()) < batch["input_ids"].shape[1]  # some rows are padded with the same id
    sft_batch = collate_sft([tokenize_sft({"text": "The movie was great."}, tiny_tokenizer, 32, 16)], pad)
    assert sft_batch["labels"][0, -1].item() == eos


def test_a_row_of_a_batch_equals_the_example_collated_alone(tiny_tokenizer, tokenized):
    pad = tiny_tokenizer.pad_token_id
    batch = collate_preference(tokenized, pad)
    size = len(tokenized)
    for index, example in enumerate(tokenized):
        alone = collate_preference([example], pad)
        for key in batch:
            for alone_row, batch_row in ((0, index), (1, size + index)):
                width = alone[key].shape[1]
                assert torch.equal(batch[key][batch_row, :width], alone[key][alone_row])
                assert (batch["attention_mask"][batch_row, width:] == 0).all()


def test_collate_sft_pads_right_and_keeps_labels(tiny_tokenizer):
    pad = tiny_tokenizer.pad_token_id
    examples = [
        tokenize_sft({"prompt": "The movie", "completion": " was great and I loved it."}, tiny_tokenizer, 32, 16),
        tokenize_sft({"text": "Dull."}, tiny_tokenizer, 32, 16),
    ]
    batch = collate_sft(examples, pad)
    width = max(len(example["input_ids"]) for example in examples)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (2, width)
    for row, example in enumerate(examples):
        padding = width - len(example["input_ids"])
        assert batch["input_ids"][row].tolist() == example["input_ids"] + [pad] * padding
        assert batch["attention_mask"][row].tolist() == [1] * len(example["input_ids"]) + [0] * padding
        assert batch["labels"][row].tolist() == example["labels"] + [IGNORE_INDEX] * padding


def test_collating_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        collate_preference([], pad_token_id=0)
