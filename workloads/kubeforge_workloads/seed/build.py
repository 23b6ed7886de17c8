"""Build the seed artifacts deterministically: tokenizer, tiny Llama, instruction datasets, docs."""

from __future__ import annotations

import json
from pathlib import Path

from kubeforge_workloads.seed.docs import DOCS, FACTS, PHRASINGS

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def instruction_rows() -> tuple[list[dict], list[dict]]:
    """Every fact in every phrasing; the last two phrasings of each fact are held out for evaluation."""
    train, evaluation = [], []
    for question, answer in FACTS:
        for index, phrasing in enumerate(PHRASINGS):
            row = {"instruction": phrasing.format(q=question, ql=question[0].lower() + question[1:]),
                   "response": answer}
            (evaluation if index >= len(PHRASINGS) - 2 else train).append(row)
    return train, evaluation


def corpus() -> list[str]:
    train, evaluation = instruction_rows()
    lines = [line for text in DOCS.values() for line in text.splitlines()]
    lines += [f"### Question\n{r['instruction']}\n### Answer\n{r['response']}" for r in train + evaluation]
    return lines


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    fast.save_pretrained(directory)
    return fast


def build_tiny_llama(directory: Path, hidden_size: int = 64, layers: int = 2) -> Path:
    """A tiny Llama from a config, weights from a fixed seed: the same bytes on every machine."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    return directory


def write_datasets(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    train, evaluation = instruction_rows()
    paths = []
    for name, rows in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        path = directory / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        paths.append(path)
    return paths[0], paths[1]
