"""Batched generation of a template's answers for a block of table rows, with the endpoint's own prompt building
(kubeforge_workloads.serve: fill_template, the engine's chat prompt) and weights (serve.app.load_engine)."""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from kubeforge.api.serveapp import ServeAppConfig, ServedTemplate
from kubeforge_workloads.common.errors import DataError, UserError
from kubeforge_workloads.serve.app import SAMPLING_PARAMETERS, fill_template
from kubeforge_workloads.serve.protocol import ApiError

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def find_template(app: ServeAppConfig, name: str) -> ServedTemplate:
    for template in app.templates:
        if template.name == name:
            return template
    raise UserError(f"--template {name}: ServingEndpoint {app.endpoint} has no such promptTemplates entry; it has "
                    f"{sorted(t.name for t in app.templates) or 'none'}")


def adapter_of(app: ServeAppConfig, model: str) -> Optional[str]:
    """None for the base model (the endpoint's name), else the adapter's name."""
    if model == app.base.name:
        return None
    if model in {a.name for a in app.adapters}:
        return model
    raise UserError(f"--model {model}: ServingEndpoint {app.endpoint} serves {app.base.name} and adapters "
                    f"{sorted(a.name for a in app.adapters)}; pick one of those")


def messages_for(template: ServedTemplate, text: str) -> list[dict]:
    """The chat messages the endpoint builds for model `<endpoint>:<template>` (serve.app's prepare)."""
    try:
        filled = fill_template(template, text, {})
    except ApiError as error:
        raise UserError(error.message) from None
    system = [{"role": "system", "content": template.system}] if template.system else []
    return system + [{"role": "user", "content": filled}]


def parse_answer(text: str) -> Any:
    """The answer as JSON when it is (or contains) one JSON object, else None."""
    for candidate in (text.strip(), *(m.group(0) for m in [_JSON_OBJECT.search(text)] if m)):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def sampling_defaults(app: ServeAppConfig, template: ServedTemplate) -> tuple[float, int, tuple[str, ...]]:
    params = {k: v for k, v in template.parameters.items() if k in SAMPLING_PARAMETERS}
    stop = params.get("stop") or ()
    return (float(params.get("temperature", 0.0)), int(params.get("max_tokens") or app.max_tokens),
            (stop,) if isinstance(stop, str) else tuple(stop))


def input_texts(rows: list[dict], column: str, first_row: int) -> list[str]:
    texts = []
    for offset, row in enumerate(rows):
        value = row.get(column)
        if not isinstance(value, str):
            raise DataError(f"row {first_row + offset} has no text column {column!r} (columns: {sorted(row)}): "
                            "pass the right one with --column")
        texts.append(value)
    return texts


class TransformersBlockGenerator:
    """Left-padded `model.generate` over up to max_num_seqs prompts at a time, on the engine's model and tokenizer."""

    def __init__(self, engine, adapter: Optional[str], temperature: float, max_tokens: int, stop: tuple[str, ...]):
        self.engine, self.adapter = engine, adapter
        self.temperature, self.max_tokens, self.stop = temperature, max_tokens, stop

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        size = self.engine.max_num_seqs
        texts: list[str] = []
        for start in range(0, len(conversations), size):
            texts += self._generate([self.engine.chat_prompt(m) for m in conversations[start:start + size]])
        return texts

    def _generate(self, prompts: list[list[int]]) -> list[str]:
        import torch

        engine = self.engine
        width = max(len(p) for p in prompts)
        room = engine.context_length - width
        if room <= 0:
            raise DataError(f"a prompt has {width} tokens, more than the model's context of {engine.context_length}: "
                            "shorten the rows or the template")
        ids = [[engine.pad_id] * (width - len(p)) + p for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        options: dict[str, Any] = dict(max_new_tokens=min(self.max_tokens, room), pad_token_id=engine.pad_id)
        if self.temperature > 0:
            options.update(do_sample=True, temperature=self.temperature, top_k=0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        device = next(engine.model.parameters()).device
        with engine._adapter(self.adapter), torch.inference_mode():
            out = engine.model.generate(input_ids=torch.tensor(ids, device=device),
                                        attention_mask=torch.tensor(mask, device=device), **options)
        texts = []
        for row in out[:, width:].tolist():
            tokens = []
            for token in row:
                if token in engine.eos_ids:
                    break
                tokens.append(token)
            text = engine.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in self.stop:
                text = text.split(stop, 1)[0]
            texts.append(text)
        return texts


class VllmBlockGenerator:
    """GPU path: vLLM's offline LLM over the same chat prompts (imported only here; never on CPU)."""

    def __init__(self, app: ServeAppConfig, base_dir, adapter_dirs: dict, adapter: Optional[str],
                 temperature: float, max_tokens: int, stop: tuple[str, ...]):
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        self.llm = LLM(model=str(base_dir), dtype=app.engine.dtype, max_model_len=app.engine.max_model_len,
                       gpu_memory_utilization=app.engine.gpu_memory_utilization,
                       tensor_parallel_size=app.engine.tensor_parallel_size, enable_lora=bool(adapter_dirs))
        self.params = SamplingParams(temperature=temperature, max_tokens=max_tokens, stop=list(stop) or None)
        self.lora = LoRARequest(adapter, 1, str(adapter_dirs[adapter])) if adapter else None

    def __call__(self, conversations: list[list[dict]]) -> list[str]:
        outputs = self.llm.chat(conversations, self.params, lora_request=self.lora, use_tqdm=False)
        return [o.outputs[0].text for o in outputs]
