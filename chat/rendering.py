"""Markdown → HTML on the server, then sanitized with bleach. The browser never renders Markdown.

Fenced code blocks are highlighted by Pygments on the server (`codehilite`): the result is
spans with token classes inside the same sanitizer (static/chat/highlight.css colours them),
so highlighting adds no script and no way around the allow-list.
"""

import html
import threading
from functools import partial

import bleach
import markdown
from bleach.linkifier import LinkifyFilter
from pygments.formatters import HtmlFormatter

ALLOWED_TAGS = frozenset(
    {
        "p",
        "br",
        "hr",
        "strong",
        "em",
        "b",
        "i",
        "del",
        "code",
        "pre",
        "blockquote",
        "ul",
        "ol",
        "li",
        "a",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "span",
        "div",
    }
)
ALLOWED_ATTRIBUTES = {
    "a": ["href", "title", "rel"],
    "code": ["class"],
    "span": ["class"],
    "div": ["class"],
    "pre": ["class"],
    "th": ["align"],
    "td": ["align"],
}
ALLOWED_PROTOCOLS = frozenset({"http", "https", "mailto"})


def _link_attributes(attrs: dict, new: bool = False) -> dict:
    href_key = (None, "href")
    if href_key not in attrs:
        return attrs
    attrs[(None, "rel")] = "noopener nofollow"
    attrs[(None, "target")] = "_blank"
    return attrs


def _cleaner() -> bleach.Cleaner:
    return bleach.Cleaner(
        tags=ALLOWED_TAGS,
        attributes={**ALLOWED_ATTRIBUTES, "a": ["href", "title", "rel", "target"]},
        protocols=ALLOWED_PROTOCOLS,
        strip=False,
        filters=[partial(LinkifyFilter, callbacks=[_link_attributes], skip_tags={"pre", "code"})],
    )


class _CodeFormatter(HtmlFormatter):
    """Pygments' HTML with the block's language as a class on its <code> (language-python)."""

    def __init__(self, lang_str: str = "", **options) -> None:
        super().__init__(**options)
        self.lang_str = lang_str

    def _wrap_code(self, source):
        yield 0, f'<code class="{html.escape(self.lang_str)}">'
        yield from source
        yield 0, "</code>"


def _markdown() -> markdown.Markdown:
    md = markdown.Markdown(
        extensions=["fenced_code", "codehilite", "tables", "sane_lists"],
        extension_configs={
            "codehilite": {"css_class": "highlight", "guess_lang": False, "pygments_formatter": _CodeFormatter}
        },
        output_format="html",
    )
    # Raw HTML in user or model text is shown as text, never passed through as markup.
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md


# One Markdown converter and one sanitizer per thread, reused: neither is thread-safe (bleach's
# parser keeps state; shared, concurrent renderings raised errors and mixed their outputs), and
# building them for every rendering was wasted work (bench/rendering.py).
_local = threading.local()


def render_markdown(text: str) -> str:
    """Render untrusted Markdown (user or model text) to safe HTML."""
    renderers = getattr(_local, "renderers", None)
    if renderers is None:
        renderers = _local.renderers = (_markdown(), _cleaner())
    converter, cleaner = renderers
    return cleaner.clean(converter.reset().convert(text))
