"""How long a message may be, as the person sees it in the chat page and as the socket checks it.

The model's real limit is in tokens (`LanguageModel.max_input_tokens`: system prompt and message,
older turns are dropped first). The page estimates a text's tokens from its length with one
ratio, `CHAT_CHARS_PER_TOKEN`, chosen to err on the safe side (bench/token_counter.py measures it
against the packaged model's tokenizer on prose, code and mixed text), plus the chat template's
few tokens per message. The socket counts with the model's own tokenizer (`exact_prompt_tokens`:
its tokenizer.json through the `tokenizers` library, a millisecond a message; the template's few
tokens a message added), so a message that cannot fit is refused before anything is stored.
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


def exact_prompt_tokens(content: str, system_prompt: str, model) -> int | None:
    """The tokens of the newest turn's prompt by the model's own tokenizer (the system prompt and
    the message, plus the chat template's TEMPLATE_TOKENS a message); None when the model has no
    tokenizer file here (inference/loading.py `fast_tokenizer_of`)."""
    from inference.loading import fast_tokenizer_of

    tokenizer = fast_tokenizer_of(model)
    if tokenizer is None:
        return None
    texts = [content, system_prompt] if system_prompt.strip() else [content]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(len(e.ids) for e in encoded) + TEMPLATE_TOKENS * len(texts)


def prompt_tokens_checked(content: str, system_prompt: str, model) -> int:
    """The prompt's tokens as the limit is checked: exactly, with the model's tokenizer (a few
    milliseconds for a long message), or the estimate when the tokenizer cannot be loaded here.
    Emoji and many non-Latin scripts take several tokens a character: no ratio is safe for them."""
    exact = exact_prompt_tokens(content, system_prompt, model)
    return prompt_tokens(content, system_prompt) if exact is None else exact


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
