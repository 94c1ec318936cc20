"""A reply's Markdown rendered while it streams, for the `html` of `chat.delta` frames.

The text so far goes through the same `render_markdown` (and sanitizer) as the finished reply, so
the page shows no raw Markdown and nothing jumps when `chat.done` arrives; what the model has
opened and not closed yet (a code fence, `**`) is closed for the live rendering only. Rendering
costs more as the reply grows, and a process renders every reply streaming through it: after
each render the forwarder pauses (`pause_s`) for what the render took times the replies rendering
in this process, so live rendering takes about `RENDER_SHARE` of one core whatever their number
(on a machine whose cores run llama.cpp, every CPU second the web tier spends is taken from it:
bench/cpu_split.py). The deltas that arrive meanwhile are sent together, with one rendering after
the last of them.
"""

from __future__ import annotations

import re
import time

from asgiref.sync import sync_to_async

from inference import streams

from .rendering import render_markdown

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
PARTIAL_FENCE = re.compile(r"\n {0,3}(`{1,2}|~{1,2})$")
INLINE_MARKERS = ("`", "**", "~~", "*")  # the order matters: "**" before "*"
RENDER_SHARE = 0.05  # about this share of one core goes into live rendering, for all replies
MAX_PAUSE_S = 0.5  # a very long reply still updates twice a second
ACTIVE_S = 1.0  # a reply rendered within this long counts as rendering

_last_render: dict[int, float] = {}  # id(LiveMarkdown) → when it last rendered (this process)


def rendering_now(instance_id: int, now: float) -> int:
    """Note that this reply renders now; how many replies rendered within ACTIVE_S (itself included)."""
    _last_render[instance_id] = now
    for key, at in list(_last_render.items()):
        if now - at > ACTIVE_S:
            _last_render.pop(key, None)
    return len(_last_render)


def completed(text: str) -> str:
    """The text so far with what the model has opened and not yet closed closed for it, so a
    streaming reply never shows raw markers: an open code fence is closed (the block shows as
    code while it streams), and in the last paragraph an unmatched `**`, `*`, `~~` or backtick is
    closed after the text, or dropped when nothing follows it yet."""
    fences = FENCE.findall(text)
    if len(fences) % 2:
        return text + ("\n" if not text.endswith("\n") else "") + fences[-1]
    last = text.rpartition("\n\n")[2]
    tail = PARTIAL_FENCE.sub("", last)  # a fence still being typed ("``")
    for marker in INLINE_MARKERS:
        if marker == "*":
            # A list bullet ("* item") opens nothing; neither do the halves of "**".
            body = re.sub(r"^\s*\* ", "", tail.replace("**", ""), flags=re.MULTILINE)
            count = body.count("*")
        elif marker == "`":
            count = tail.count("`")
        else:
            count = tail.count(marker)
        if count % 2 == 0:
            continue
        after = tail[tail.rfind(marker) + len(marker) :]
        if marker != "`" and after[:1].isspace():
            continue  # "2 * 3": a marker followed by a space opens nothing
        if tail.rstrip().endswith(marker):
            tail = tail.rstrip()[: -len(marker)]  # opened just now, nothing to mark yet
        else:
            tail = tail.rstrip() + marker
        if marker == "`":
            break  # inside an inline code span the other markers are plain text
    return text[: len(text) - len(last)] + tail


class LiveMarkdown:
    """The text of one reply so far and its latest rendering."""

    def __init__(self, text: str = "") -> None:
        self.text = text
        self.pause_s = 0.0

    def add(self, text: str) -> None:
        self.text += text

    def html(self) -> str:
        """The sanitized HTML of the text so far; sets `pause_s` from what rendering took."""
        started = time.perf_counter()
        html = render_markdown(completed(self.text))
        now = time.perf_counter()
        replies = rendering_now(id(self), now)
        self.pause_s = min(MAX_PAUSE_S, (now - started) * replies * (1 - RENDER_SHARE) / RENDER_SHARE)
        return html

    async def render(self) -> str:
        """The sanitized HTML of the text so far (in a thread: the event loop keeps serving)."""
        return await sync_to_async(self.html, thread_sensitive=False)()


async def text_until(request_id: str, seq: int) -> str:
    """The reply's text up to and including delta `seq`, read back from its stream: a resumed
    forwarder renders the whole reply, not only what it sends after `seq`."""
    parts: list[str] = []
    last = 0
    while last < seq:
        entries = await streams.read_after(request_id, last, None)
        if not entries:
            break
        for entry_seq, kind, data in entries:
            if entry_seq > seq or kind == "done":
                return "".join(parts)
            parts.append(data.get("text", ""))
            last = entry_seq
    return "".join(parts)
