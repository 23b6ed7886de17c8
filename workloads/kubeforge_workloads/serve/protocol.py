"""The OpenAI wire format: request bodies, response objects, and errors in OpenAI's shape (the official `openai`
client maps their status codes to its exception types)."""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


class ApiError(Exception):
    """An error the client caused or must wait out; rendered as {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both completion routes share. Unknown fields are accepted and ignored, as OpenAI-compatible servers
    do, so newer clients keep working."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: Optional[float] = Field(default=None, ge=0, le=2)
    top_p: Optional[float] = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    template_args: dict[str, Any] = Field(default_factory=dict)
    """Values for a prompt template's fields other than {input} (overriding the template's parameters)."""

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(pattern=r"^(system|developer|user|assistant|tool)$")
    content: Union[str, list[dict], None] = None

    def text(self) -> str:
        """The message's text; content parts other than text are not understood by a text model."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    """The newer name of max_tokens for chat; either is honoured."""


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str]]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_card(name: str, created: int, parent: Optional[str] = None) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "kubeforge", "root": parent or name,
            "parent": parent}
