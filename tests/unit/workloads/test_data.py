"""Instruction data: bad rows are reported with line numbers, never skipped; only answers are learned."""

import json

import pytest

from kubeforge.api.finetune import DatasetSpec
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.finetune.data import PadCollator, read_examples, tokenize

SPEC = DatasetSpec(train_uri="s3://b/t.jsonl", prompt_template="Q: {instruction}\nA: ")


def write(tmp_path, lines):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_reads_instruction_rows(tmp_path):
    path = write(tmp_path, [json.dumps({"instruction": "hi?", "response": "hello"}), ""])
    (example,) = read_examples(path, SPEC, "s3://b/t.jsonl")
    assert example.prompt == "Q: hi?\nA: " and example.answer == "hello"


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
    path = write(tmp_path, [json.dumps({"instruction": "ok", "response": "fine"}), "{not json",
                            json.dumps({"instruction": "no answer"}), json.dumps(["a list"]),
                            json.dumps({"response": "no question"})])
    with pytest.raises(DataError) as info:
        read_examples(path, SPEC, "s3://b/t.jsonl")
    message = str(info.value)
    assert message.startswith("s3://b/t.jsonl: 4 invalid row(s)")
    assert "line 2: not JSON" in message and "line 3: missing field 'response'" in message
    assert "line 4: expected a JSON object" in message and "line 5: missing field 'instruction'" in message


def test_template_with_a_field_rows_lack(tmp_path):
    spec = DatasetSpec(train_uri="s3://b/t.jsonl", prompt_template="{context} {instruction}")
    path = write(tmp_path, [json.dumps({"instruction": "x", "response": "y"})])
    with pytest.raises(DataError, match="line 1: missing field 'context'"):
        read_examples(path, spec, "s3://b/t.jsonl")


def test_malformed_template_is_a_user_error(tmp_path):
    spec = DatasetSpec(train_uri="s3://b/t.jsonl", prompt_template="{instruction")
    with pytest.raises(UserError, match="promptTemplate"):
        read_examples(write(tmp_path, ["{}"]), spec, "s3://b/t.jsonl")


def test_chat_and_text_formats(tmp_path):
    chat = DatasetSpec(train_uri="s3://b/t.jsonl", format="chat")
    path = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]})])
    (example,) = read_examples(path, chat, "x")
    assert example.prompt == "<|user|>\nhi\n<|assistant|>\n" and example.answer == "hello"
    text = DatasetSpec(train_uri="s3://b/t.jsonl", format="text")
    (plain,) = read_examples(write(tmp_path, [json.dumps({"text": "corpus line"})]), text, "x")
    assert plain.prompt == "" and plain.answer == "corpus line"


class FakeTokenizer:
    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + len(word) for word in text.split()]}


def test_prompt_tokens_are_masked_from_the_loss():
    from kubeforge_workloads.finetune.data import Example

    (row,) = tokenize([Example("a bb", "ccc")], FakeTokenizer(), max_length=64)
    assert row["input_ids"] == [1, 11, 12, 13, 2]
    assert row["labels"] == [-100, -100, -100, 13, 2]
    (cut,) = tokenize([Example("a bb", "ccc")], FakeTokenizer(), max_length=3)
    assert cut["input_ids"] == [1, 11, 12] and cut["labels"] == [-100, -100, -100]


def test_collator_pads_and_masks():
    batch = PadCollator(pad_id=0)([{"input_ids": [5, 6], "labels": [-100, 6]}, {"input_ids": [7], "labels": [7]}])
    assert batch["input_ids"].tolist() == [[5, 6], [7, 0]]
    assert batch["labels"].tolist() == [[-100, 6], [7, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]


def test_chat_rows_are_validated_with_line_numbers(tmp_path):
    chat = DatasetSpec(train_uri="s3://b/t.jsonl", format="chat")
    path = write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
                            json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
                            json.dumps({"text": "no messages"})])
    with pytest.raises(DataError) as info:
        read_examples(path, chat, "x")
    message = str(info.value)
    assert "line 1: the last message must have role 'assistant'" in message
    assert "line 2: messages[0] needs string 'role' and 'content'" in message
    assert "line 3: missing field 'messages'" in message


def test_chat_uses_the_tokenizer_chat_template_when_it_has_one(tmp_path):
    from kubeforge_workloads.finetune.data import chat_prompt

    chat = DatasetSpec(train_uri="s3://b/t.jsonl", format="chat")
    path = write(tmp_path, [json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "hello"}]})])
    (example,) = read_examples(path, chat, "x")

    class Templated(FakeTokenizer):
        chat_template = "set"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt
            return "|".join(m["content"] for m in messages) + "|>"

    assert chat_prompt(example, Templated()) == "be brief|hi|>"
    assert chat_prompt(example, FakeTokenizer()) == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"
    (row,) = tokenize([example], Templated(), max_length=64)
    assert row["labels"][-2:] == [15, 2] and set(row["labels"][:-2]) == {-100}
