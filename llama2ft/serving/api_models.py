"""Request bodies of the OpenAI-compatible API, and its OpenAI-style error responses."""
# No `from __future__ import annotations`: FastAPI and pydantic read real annotations.
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list, None] = None


class Common(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields (user, logprobs=false, ...) are ignored
    model: Optional[str] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    repetition_penalty: Optional[float] = None
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False


class ChatRequest(Common):
    messages: list[Message]


class CompletionRequest(Common):
    prompt: Union[str, list[str]]


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: Optional[str] = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": None}})
