"""How long a message may be, as the person sees it in the chat page and as the socket checks it.

The model's real limit is in tokens (`LanguageModel.max_input_tokens`: system prompt and message,
older turns are dropped first). The web process has no tokenizer, so both the page and the socket
estimate a text's tokens from its length with one ratio, `CHAT_CHARS_PER_TOKEN` (measured on the
packaged model's tokenizer: 3.2 characters per token for English prose, 3.7 for code), plus the
chat template's few tokens per message. The inference worker still counts exactly.
"""

from __future__ import annotations

import math

from django.conf import settings

TEMPLATE_TOKENS = 8  # the chat template's tokens around each message (role markers, newlines)


def estimate_tokens(text: str) -> int:
    """About how many tokens `text` is (rounded up; 0 for no text)."""
    return math.ceil(len(text) / settings.CHAT_CHARS_PER_TOKEN) if text else 0


def system_tokens(system_prompt: str) -> int:
    """The estimated tokens a system prompt adds to every prompt (0 for none)."""
    return estimate_tokens(system_prompt) + TEMPLATE_TOKENS if system_prompt.strip() else 0


def prompt_tokens(content: str, system_prompt: str) -> int:
    """The estimated prompt of a message sent with `system_prompt` (the newest turn alone)."""
    return estimate_tokens(content) + TEMPLATE_TOKENS + system_tokens(system_prompt)


def page_config(models) -> dict:
    """What the chat page needs to count the message box the way the socket checks it: the
    ratio, and per model its input limit and the tokens of its own system prompt (used when the
    conversation sets none)."""
    return {
        "maxMessageChars": settings.CHAT_MAX_MESSAGE_CHARS,
        "charsPerToken": settings.CHAT_CHARS_PER_TOKEN,
        "templateTokens": TEMPLATE_TOKENS,
        "inputLimits": {
            m.slug: {"maxInputTokens": m.max_input_tokens, "systemTokens": system_tokens(m.system_prompt)}
            for m in models
        },
    }
