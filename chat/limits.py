"""How long a message may be, as the person sees it in the chat page and as the socket checks it.

The model's real limit is in tokens (`LanguageModel.max_input_tokens`: system prompt and message,
older turns are dropped first). The page estimates a text's tokens from its length with one
ratio, `CHAT_CHARS_PER_TOKEN`, chosen to err on the safe side (bench/token_counter.py measures it
against the packaged model's tokenizer on prose, code and mixed text), plus the chat template's
few tokens per message. The socket counts exactly with the model's own tokenizer and chat
template (`exact_prompt_tokens`), so a message that cannot fit is refused before anything is
stored.
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
    """The tokens of the newest turn's prompt (the system prompt and the message, in the model's
    chat template) by the model's own tokenizer; None when it cannot be loaded here."""
    from inference.loading import ModelLoadError, tokenizer_of
    from inference.prompts import apply_template

    try:
        tokenizer = tokenizer_of(model)
    except ModelLoadError:
        return None
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return len(apply_template(tokenizer, [*messages, {"role": "user", "content": content}]))


def warm(model) -> None:
    """Load the model's tokenizer now (once per process), so that counting a prompt inside a
    database transaction is only the counting. Best effort."""
    from inference.loading import ModelLoadError, tokenizer_of

    try:
        tokenizer_of(model)
    except ModelLoadError:
        pass


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
