"""What crosses the process boundary between callers (chat, API, evaluation) and the inference
workers: a typed request in, raw events out. Versioned; both sides use these classes only.

Events on a request's stream (see streams.py): `delta` ({"text"}) any number of times, then one
`done` ({"finish_reason", "usage", "timing", "error"}). Finish reasons: stop, length, cancelled,
interrupted, error (and moderated, once moderation lands).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

VERSION = 1
FINISH_REASONS = ("stop", "length", "cancelled", "interrupted", "moderated", "error")
# Interactive: a person waits for it (chat replies, API calls). Background: nobody watches it
# come (titles; later evaluations and replays): it runs only on capacity no interactive request
# wants, and gives way to one that arrives (docs/protocol.md, "Priorities").
INTERACTIVE, BACKGROUND = "interactive", "background"
PRIORITIES = (INTERACTIVE, BACKGROUND)


class ProtocolError(ValueError):
    pass


@dataclass
class Request:
    """One generation. `id` is unique per caller kind ("chat-123"); `sink` names the registered
    sink that stores its result (or "" when the caller only reads the stream)."""

    id: str
    model: str
    messages: list[dict]
    sampling: dict  # inference.sampling.resolve() output: every setting, max_tokens, seed?, stop?
    max_input_tokens: int
    sink: str = ""
    user: str = ""  # who asked, for per-user limits and logs
    priority: str = INTERACTIVE
    # Background work: a worker that takes it after this time (epoch seconds) ends it as
    # cancelled instead of running it (a title nobody had capacity for keeps the cut one).
    deadline: float | None = None
    enqueued_at: float = field(default_factory=time.time)
    version: int = VERSION

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ProtocolError(f"Unknown priority {self.priority!r}.")

    @property
    def background(self) -> bool:
        return self.priority == BACKGROUND

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    @property
    def max_tokens(self) -> int:
        return int(self.sampling["max_tokens"])

    @property
    def stop(self) -> list[str]:
        return list(self.sampling.get("stop") or [])

    @property
    def seed(self) -> int | None:
        return self.sampling.get("seed")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Request:
        if data.get("version") != VERSION:
            raise ProtocolError(f"Request version {data.get('version')!r} is not {VERSION}.")
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Done:
    """The end of a request: why it ended, how many tokens, how fast, and any error text."""

    finish_reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    error: str = ""
    worker: str = ""
    moderation: list[dict] = field(default_factory=list)  # output rules that matched (matching.Match.record)

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ProtocolError(f"Unknown finish reason {self.finish_reason!r}.")

    def to_dict(self) -> dict:
        return {
            "finish_reason": self.finish_reason,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "timing": {"ttft_ms": self.ttft_ms, "tokens_per_s": self.tokens_per_s},
            "error": self.error,
            "worker": self.worker,
            "moderation": self.moderation,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Done:
        usage, timing = data.get("usage") or {}, data.get("timing") or {}
        return cls(
            finish_reason=data["finish_reason"],
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            ttft_ms=timing.get("ttft_ms"),
            tokens_per_s=timing.get("tokens_per_s"),
            error=data.get("error", ""),
            worker=data.get("worker", ""),
            moderation=list(data.get("moderation") or []),
        )
