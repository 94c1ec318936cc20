"""The interface every engine backend implements, and the types it exchanges with the worker.

A backend runs many requests at once (continuous batching) for one loaded model. The worker
calls `add` and `cancel` whenever it likes and `step` in a loop while `has_work`; each `step`
returns what every request produced since the last one. Backends know nothing of Django,
Redis or callers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GenerationRequest:
    """One generation for a backend: the prompt already tokenized with the model's template."""

    id: str
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    adapter: str = ""  # a LoRA adapter the backend holds (add_adapter), or "" for the base model
    background: bool = False  # nobody waits for it: it gives way to the others (protocol priorities)

    @classmethod
    def build(
        cls, request_id: str, prompt_ids: list[int], sampling: dict, adapter: str = "", background: bool = False
    ) -> GenerationRequest:
        """From an inference.sampling.resolve() dict."""
        names = set(cls.__dataclass_fields__) - {"id", "prompt_ids", "max_new_tokens", "adapter", "background"}
        return cls(
            id=request_id,
            prompt_ids=prompt_ids,
            max_new_tokens=int(sampling["max_tokens"]),
            adapter=adapter,
            background=background,
            **{k: v for k, v in sampling.items() if k in names},
        )


@dataclass
class StepEvent:
    """What one request produced in one step."""

    request_id: str
    text: str = ""
    new_tokens: int = 0
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str = ""


class Backend:
    """One loaded model serving many requests. Subclasses: transformers, llamacpp."""

    name = ""
    tokenizer = None  # a transformers tokenizer: chat template and token counts for the worker
    adapters: dict[str, str] = {}  # LoRA adapters served over this model: name → folder (read only here)

    @property
    def has_work(self) -> bool:
        raise NotImplementedError

    @property
    def load(self) -> int:
        """Requests added and not yet finished (the worker fills up to its batch size)."""
        raise NotImplementedError

    def add(self, request: GenerationRequest) -> None:
        raise NotImplementedError

    def cancel(self, request_id: str) -> None:
        """Stop a request; it ends with finish_reason 'cancelled' in a later step."""
        raise NotImplementedError

    def step(self) -> list[StepEvent]:
        raise NotImplementedError

    def add_adapter(self, name: str, folder) -> bool:
        """Serve the LoRA adapter in `folder` (peft's files, and adapter.gguf for llama.cpp) as
        `name` over this model, so requests with `adapter=name` use it. False when this backend
        cannot take it now (the worker then serves the tuned model's merged copy instead)."""
        return False

    def fail_all(self, error: str) -> list[StepEvent]:
        """After a step raised: end every request with `error` and start again empty."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (the worker unloads idle models)."""


def merge_events(events: list[StepEvent]) -> list[StepEvent]:
    """One event per request per step, in order: text concatenated, first finish wins."""
    merged: dict[str, StepEvent] = {}
    for event in events:
        current = merged.get(event.request_id)
        if current is None:
            merged[event.request_id] = StepEvent(
                event.request_id, event.text, event.new_tokens, event.finish_reason, event.error
            )
            continue
        current.text += event.text
        current.new_tokens += event.new_tokens
        current.finish_reason = current.finish_reason or event.finish_reason
        current.error = current.error or event.error
    return list(merged.values())
