"""Instruction data: JSONL rows validated line by line, formatted, tokenized with the loss on answers only."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kubeforge.api.finetune import DatasetFormat, DatasetSpec
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.common.storage import download_uri

DEFAULT_TEMPLATE = "### Instruction\n{%s}\n### Response\n"
MAX_REPORTED = 5


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    messages: Optional[tuple] = None
    """chat rows: the conversation before the answer, formatted with the tokenizer's chat template if it has one."""


def template_fields(template: str) -> list[str]:
    try:
        return [field for _, field, _, _ in string.Formatter().parse(template) if field]
    except ValueError as error:
        raise UserError(f"spec.dataset.promptTemplate is not a valid format string: {error}")


def read_examples(path: Path, spec: DatasetSpec, source: str) -> list[Example]:
    """Parse every row; collect problems with line numbers and fail with all of them, never skip silently."""
    template = spec.prompt_template or DEFAULT_TEMPLATE % spec.input_field
    fields = template_fields(template)
    examples, problems = [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append(f"line {number}: not JSON ({error.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {number}: expected a JSON object")
                continue
            try:
                examples.append(_example(row, spec, template, fields))
            except KeyError as missing:
                problems.append(f"line {number}: missing field {missing.args[0]!r}")
            except (TypeError, ValueError) as error:
                problems.append(f"line {number}: {error}")
    if problems:
        shown = "; ".join(problems[:MAX_REPORTED])
        more = f" (and {len(problems) - MAX_REPORTED} more)" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{source}: {len(problems)} invalid row(s): {shown}{more}")
    if not examples:
        raise DataError(f"{source}: no rows")
    return examples


def _example(row: dict, spec: DatasetSpec, template: str, fields: list[str]) -> Example:
    if spec.format == DatasetFormat.INSTRUCTION:
        answer = row[spec.output_field]
        missing = [f for f in fields if f not in row]
        if missing:
            raise KeyError(missing[0])
        prompt = template.format(**row)
    elif spec.format == DatasetFormat.CHAT:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{index}] needs string 'role' and 'content'")
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must have role 'assistant' (it is the answer learned)")
        history = tuple({"role": m["role"], "content": m["content"]} for m in messages[:-1])
        if not messages[-1]["content"]:
            raise ValueError("the answer must be a non-empty string")
        return Example(fallback_chat_prompt(history), messages[-1]["content"], history)
    else:
        prompt, answer = "", row["text"]
    if not isinstance(answer, str) or not answer:
        raise ValueError("the answer must be a non-empty string")
    return Example(prompt, answer)


def fallback_chat_prompt(history) -> str:
    """The chat format used when the tokenizer has no chat template."""
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in history) + "<|assistant|>\n"


def chat_prompt(example: Example, tokenizer) -> str:
    if example.messages is None:
        return example.prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(example.messages), tokenize=False, add_generation_prompt=True)
    return example.prompt


def tokenize(examples: list[Example], tokenizer, max_length: int) -> list[dict]:
    """input_ids/labels per example; prompt tokens get label -100 so only the answer is learned."""
    rows = []
    for example in examples:
        prompt = chat_prompt(example, tokenizer)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        input_ids = (bos + prompt_ids + answer_ids)[:max_length]
        labels = ([-100] * (len(bos) + len(prompt_ids)) + answer_ids)[:max_length]
        rows.append({"input_ids": input_ids, "labels": labels})
    return rows


class PadCollator:
    """Right-pads a batch; padded positions are masked in attention and ignored by the loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        ids = [item["input_ids"] + [self.pad_id] * (width - len(item["input_ids"])) for item in batch]
        labels = [item["labels"] + [-100] * (width - len(item["labels"])) for item in batch]
        mask = [[1] * len(item["input_ids"]) + [0] * (width - len(item["input_ids"])) for item in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def load_examples(spec, cache: Path, store) -> tuple[list, list]:
    train_path = download_uri(store, spec.dataset.train_uri, cache / "train")
    train = read_examples(train_path, spec.dataset, spec.dataset.train_uri)
    evaluation = []
    if spec.dataset.eval_uri:
        eval_path = download_uri(store, spec.dataset.eval_uri, cache / "eval")
        evaluation = read_examples(eval_path, spec.dataset, spec.dataset.eval_uri)
    return train, evaluation


class ListDataset:
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]
