"""Server-side Markdown rendering: useful formatting survives, nothing executable gets through."""

import re
from html.parser import HTMLParser

import pytest

from chat.live import LiveMarkdown
from chat.rendering import render_markdown

DANGEROUS_TAGS = {"script", "img", "iframe", "svg", "object", "embed", "style", "form", "input", "math", "video"}
DANGEROUS_SCHEMES = ("javascript:", "data:", "vbscript:")


class Collector(HTMLParser):
    """Every start tag with its attributes, and the visible text (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Collector:
    collector = Collector()
    collector.feed(html)
    collector.close()
    return collector


def tags_named(html: str, name: str) -> list[dict[str, str | None]]:
    return [attrs for tag, attrs in parse(html).tags if tag == name]


def assert_nothing_executable(html: str) -> None:
    for tag, attrs in parse(html).tags:
        assert tag not in DANGEROUS_TAGS, f"<{tag}> in {html!r}"
        for name, value in attrs.items():
            assert not name.startswith("on"), f"{name}= on <{tag}> in {html!r}"
            assert name not in ("style", "srcdoc"), f"{name}= on <{tag}> in {html!r}"
            if name in ("href", "src", "action", "formaction", "xlink:href") and value is not None:
                # Browsers ignore whitespace and control characters inside a scheme.
                squeezed = re.sub(r"[\x00-\x20]", "", value).lower()
                assert not squeezed.startswith(DANGEROUS_SCHEMES), f"{name}={value!r} in {html!r}"


def test_a_fenced_code_block_keeps_its_language_and_shows_html_as_text():
    html = render_markdown('```python\nprint("<b>hi</b>")\n```')
    codes = tags_named(html, "code")
    assert tags_named(html, "pre") and codes
    assert codes[0]["class"] == "language-python"
    assert not tags_named(html, "b")
    assert 'print("<b>hi</b>")' in "".join(parse(html).text)


def test_inline_code_is_rendered_as_code():
    html = render_markdown("Use `ls -la` here")
    assert "<code>ls -la</code>" in html


def test_bullet_and_numbered_lists_are_rendered():
    html = render_markdown("- apple\n- pear\n\n1. first\n2. second")
    tags = [tag for tag, _ in parse(html).tags]
    assert tags.count("ul") == 1 and tags.count("ol") == 1 and tags.count("li") == 4


def test_emphasis_headings_and_tables_are_rendered():
    html = render_markdown("# Title\n\n**bold** and *it*\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    tags = {tag for tag, _ in parse(html).tags}
    assert {"h1", "strong", "em", "table", "th", "td"} <= tags


def test_a_markdown_link_opens_safely_in_a_new_tab():
    links = tags_named(render_markdown("[site](https://example.com/page)"), "a")
    assert links == [{"href": "https://example.com/page", "rel": "noopener nofollow", "target": "_blank"}]


def test_a_bare_url_is_linkified_with_the_same_safe_attributes():
    links = tags_named(render_markdown("see https://example.org/x for more"), "a")
    assert len(links) == 1
    assert links[0]["href"] == "https://example.org/x"
    assert links[0]["rel"] == "noopener nofollow"


def test_a_url_inside_a_code_block_is_not_linkified():
    html = render_markdown("```\ncurl https://example.org/x\n```")
    assert not tags_named(html, "a")


def test_a_link_title_survives_but_rel_cannot_be_overridden():
    links = tags_named(render_markdown('[x](https://example.com "Example")'), "a")
    assert links[0]["title"] == "Example"
    assert links[0]["rel"] == "noopener nofollow"


XSS_PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "![x](javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "[x](JaVaScRiPt:alert(1))",
    "[x]( javascript:alert(1))",
    "[x](java&#x09;script:alert(1))",
    "[x](&#106;avascript:alert(1))",
    "[x](<javascript:alert(1)>)",
    "[x][ref]\n\n[ref]: javascript:alert(1)",
    "<javascript:alert(1)>",
    "[x](vbscript:msgbox(1))",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    '<iframe src="https://evil.example"></iframe>',
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
    '<div onclick="alert(1)">hi</div>',
    '<a href="https://ok.example" onmouseover="alert(1)">x</a>',
    '<p style="background:url(javascript:alert(1))">x</p>',
    '<object data="javascript:alert(1)"></object>',
    '<math><mi xlink:href="javascript:alert(1)">x</mi></math>',
    "`<script>alert(1)</script>`",
    "```\n<script>alert(1)</script>\n```",
    "> <img src=x onerror=alert(1)>",
    "- <script>alert(1)</script>",
    "| a |\n|---|\n| <img src=x onerror=alert(1)> |",
    '<form action="javascript:alert(1)"><input type=submit></form>',
]


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_an_xss_payload_renders_no_executable_markup(payload):
    html = render_markdown(payload)
    assert_nothing_executable(html)


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_an_xss_payload_streamed_in_pieces_renders_no_executable_markup_at_any_point(payload):
    # The live rendering of a streaming reply (chat/live.py) renders every prefix of the text.
    rendering = LiveMarkdown()
    for char in payload:
        rendering.add(char)
        assert_nothing_executable(rendering.html())


@pytest.mark.parametrize(
    "payload",
    ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>'],
)
def test_raw_html_is_shown_to_the_reader_as_text(payload):
    html = render_markdown(payload)
    assert payload in "".join(parse(html).text)


@pytest.mark.parametrize(
    "bad_html",
    [
        "<script>alert(1)</script>",
        "<p><img src=x onerror=alert(1)></p>",
        '<a href=" JaVa\tScRiPt:alert(1)">x</a>',
        '<a href="DATA:text/html,x">x</a>',
        '<p onclick="alert(1)">x</p>',
    ],
)
def test_the_checker_itself_catches_executable_markup(bad_html):
    with pytest.raises(AssertionError):
        assert_nothing_executable(bad_html)


def test_code_blocks_are_highlighted_on_the_server_inside_the_sanitizer():
    html = render_markdown('```python\ndef greet(name):\n    return "<script>alert(1)</script>"\n```')
    spans = tags_named(html, "span")
    assert {"k", "nf", "s2"} <= {c for s in spans for c in s.get("class", "").split()}  # keyword, name, string
    assert not tags_named(html, "script") and "<script>alert(1)</script>" in "".join(parse(html).text)


def test_a_hostile_code_fence_language_cannot_add_markup():
    for fence in ('python"><img src=x onerror=alert(1)>', 'x" onmouseover="alert(1)', "a<b>"):
        html = render_markdown(f"```{fence}\nx = 1\n```")
        assert not tags_named(html, "img") and not tags_named(html, "b")
        assert_nothing_executable(html)


def test_renderings_in_many_threads_at_once_each_get_their_own_text():
    """Live rendering runs in several threads at once (one per streaming reply): neither the
    Markdown converter nor bleach's parser may be shared between them (a shared one raised
    errors and mixed replies). The switch interval is cut so threads interleave mid-parse."""
    import sys
    import threading

    texts = [
        f"# Reply {i}\n\n"
        + "\n\n".join(
            f"Paragraph {j} of reply {i}, **bold {i}**, `code {i}`, https://example.com/{i}/{j}" for j in range(30)
        )
        + f"\n\n```python\nprint({i})\n```\n"
        for i in range(6)
    ]
    expected = [render_markdown(t) for t in texts]
    failures = []

    def render_often(i: int) -> None:
        for _ in range(10):
            try:
                if render_markdown(texts[i]) != expected[i]:
                    failures.append((i, "another reply's text or a broken tree"))
            except Exception as exc:
                failures.append((i, repr(exc)))

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=render_often, args=(i,)) for i in range(len(texts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert failures == []
