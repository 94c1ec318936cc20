"""The chat page people expect, in a real browser (Debian's chromium through Playwright) against
the real stack: daphne, Redis and an inference worker serving the tiny test model.

The tiny model's replies are random tokens, so the tests that need a known reply (live Markdown,
highlighted code, copy) script one: `scripted_reply` stores a conversation whose reply is
"generating" on the stack's live worker (so nothing reaps it), and the test appends that reply's
deltas to its Redis stream exactly as a worker does (`inference.streams` keys and entry ids). The
page, the socket and the forwarder run their normal code paths; only the text is chosen.
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Page, expect

from chat import replies
from inference import streams

from . import browser_helpers
from .browser_helpers import (
    ASSISTANT,
    USER,
    USERNAME,
    live_stack,
    logged_in_page,
    new_chat,
    wait_connected,
    wait_finished,
)

pytestmark = [pytest.mark.browser, pytest.mark.stack]

REPLY = [
    "Here is **bold",
    "** text and",
    " a list:\n\n- one\n",
    "- two\n\n```python\n",
    "def greet(name):\n",
    "    return 1\n```\n",
]
CODE = "def greet(name):\n    return 1"

# Every 30 ms: the latest assistant message's status, visible text and HTML.
WATCH_JS = """
(() => {
  window.__seen = [];
  setInterval(() => {
    const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
    const last = all[all.length - 1];
    if (!last) return;
    const body = last.querySelector('.message-body');
    window.__seen.push({status: last.getAttribute('data-status'), text: body.innerText, html: body.innerHTML});
  }, 30);
})();
"""

SCRIPTED = (
    "import json\n"
    "from django.contrib.auth import get_user_model\n"
    "from chat.models import Conversation, LanguageModel, Message\n"
    "user = get_user_model().objects.get(username={username!r})\n"
    "model = LanguageModel.objects.get(slug='tiny')\n"
    "c = Conversation.objects.create(user=user, title='Scripted', model=model)\n"
    "Message.objects.create(conversation=c, role='user', content='Show me', html='<p>Show me</p>')\n"
    "r = Message.objects.create(conversation=c, role='assistant', status='generating', model=model, worker={worker!r})\n"
    "print('IDS', json.dumps([c.pk, r.pk]))\n"
)
FINISH = (
    "from chat.models import Message\n"
    "from chat.rendering import render_markdown\n"
    "content = {content!r}\n"
    "Message.objects.filter(pk={pk}).update(status='complete', finish_reason='stop', content=content, "
    "html=render_markdown(content), completion_tokens=12)\n"
)
DISABLED = (
    "from django.contrib.auth import get_user_model\n"
    "from chat.models import Conversation, LanguageModel\n"
    "old = LanguageModel.objects.create(name='Retired', slug='retired', location='/models/retired', enabled=False)\n"
    "c = Conversation.objects.create(user=get_user_model().objects.get(username={username!r}), title='Old', model=old)\n"
    "print('ID', c.pk)\n"
)


# chromium (tests/browser_helpers.py)
browser = browser_helpers.browser


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """The real stack serving the tiny model."""
    stack_dir = tmp_path_factory.mktemp("chat-page-stack")
    with live_stack(stack_dir, model_dir=tiny_model_dir, extra_env={"CHAT_RATE_LIMIT": "0"}) as live:
        yield live


@pytest.fixture
def page(browser, stack):
    """A logged-in page that may use the clipboard (the copy buttons)."""
    with logged_in_page(browser, stack, permissions=["clipboard-read", "clipboard-write"]) as logged_in:
        yield logged_in


# --- a scripted reply --------------------------------------------------------------------------
def scripted_reply(stack) -> tuple[int, int]:
    """A conversation whose reply is generating on the live worker: (conversation, reply) ids."""
    out = stack.run_manage("shell", "-c", SCRIPTED.format(username=USERNAME, worker=stack.worker_id(0)))
    return tuple(json.loads([line for line in out.splitlines() if line.startswith("IDS ")][-1][4:]))


def stream(stack, reply_id: int, seq: int, text: str | None) -> None:
    """Append one delta (or, with None, the reply's end) to the reply's stream, as a worker does."""
    key = streams.stream_key(replies.request_id(reply_id))
    kind, data = ("done", {"finish_reason": "stop"}) if text is None else ("delta", {"text": text})
    with stack.redis() as conn:
        conn.xadd(key, {"kind": kind, "data": json.dumps(data)}, id=streams.entry_id(seq))


def finish(stack, reply_id: int, pieces: list[str]) -> None:
    stack.run_manage("shell", "-c", FINISH.format(content="".join(pieces), pk=reply_id))
    stream(stack, reply_id, len(pieces) + 1, None)


def stream_scripted_reply(page: Page, stack) -> int:
    """Open a scripted conversation, stream REPLY into it piece by piece, and finish it."""
    conversation, reply_id = scripted_reply(stack)
    page.add_init_script(WATCH_JS)
    page.goto(f"/c/{conversation}/")
    wait_connected(page)
    reply = page.locator(ASSISTANT).last
    for seq, piece in enumerate(REPLY, start=1):
        stream(stack, reply_id, seq, piece)
        expect(reply).to_have_attribute("data-markdown", "".join(REPLY[:seq]))
        page.wait_for_timeout(150)  # let the watcher see this state
    finish(stack, reply_id, REPLY)
    wait_finished(reply)
    return reply_id


def clipboard(page: Page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


# --- tests -------------------------------------------------------------------------------------
def test_markdown_renders_while_the_reply_streams_without_raw_markers_or_a_jump_at_the_end(page, stack):
    stream_scripted_reply(page, stack)
    seen = page.evaluate("window.__seen")
    streaming = [s for s in seen if s["status"] == "generating" and s["text"].strip()]
    assert len({s["text"] for s in streaming}) >= 3, "the reply was not seen streaming"
    for sample in streaming:
        assert "**" not in sample["text"] and "```" not in sample["text"], sample["text"]
    assert any("<strong>bold</strong>" in s["html"] for s in streaming)  # bold before the reply ended
    assert any('class="highlight"' in s["html"] for s in streaming)  # code shown as code while it streams
    last_streamed = streaming[-1]["text"]
    reply = page.locator(ASSISTANT).last
    expect(reply).to_have_attribute("data-status", "complete")
    final = reply.get_by_test_id("message-body").inner_text()
    # The final rendering is what streamed (the code block's Copy button aside).
    assert " ".join(final.replace("Copy", "").split()) == " ".join(last_streamed.split())


def test_code_is_highlighted_and_the_copy_buttons_copy_the_code_and_the_markdown(page, stack):
    reply_id = stream_scripted_reply(page, stack)
    reply = page.locator(f'[data-message-id="{reply_id}"]')
    code = reply.locator(".highlight pre")
    expect(code.locator("span.k").first).to_have_text("def")  # Pygments' keyword class
    expect(code.locator("span.nf").first).to_have_text("greet")
    assert page.evaluate("getComputedStyle(document.querySelector('.highlight .k')).color") != page.evaluate(
        "getComputedStyle(document.querySelector('.highlight .nf')).color"
    )

    copy_code = reply.get_by_test_id("copy-code")
    expect(copy_code).to_have_accessible_name("Copy code")
    copy_code.click()
    expect(copy_code).to_have_text("Copied")
    assert clipboard(page) == CODE

    # Keyboard: the reply's Copy is a focusable button that Enter presses.
    copy_reply = reply.get_by_test_id("copy-reply")
    copy_reply.focus()
    page.keyboard.press("Enter")
    expect(copy_reply).to_have_text("Copied")
    assert clipboard(page) == "".join(REPLY)
    expect(page.get_by_test_id("reply-status")).to_have_text("Copied to the clipboard.")
    expect(copy_reply).to_have_text("Copy", timeout=5000)  # the state clears by itself

    # After a reload the stored Markdown is copied (the page never streamed it).
    page.evaluate("navigator.clipboard.writeText('')")
    page.reload()
    wait_connected(page)
    page.locator(f'[data-message-id="{reply_id}"]').get_by_test_id("copy-reply").click()
    assert clipboard(page) == "".join(REPLY)


def test_an_xss_payload_streamed_into_a_reply_never_runs(page, stack):
    conversation, reply_id = scripted_reply(stack)
    page.add_init_script(WATCH_JS)
    page.goto(f"/c/{conversation}/")
    wait_connected(page)
    pieces = ['<img src=x onerror="window.__xss=1">', " and [x](javascript:window.__xss=1) ", "<script>window.__xss=1"]
    for seq, piece in enumerate(pieces, start=1):
        stream(stack, reply_id, seq, piece)
        expect(page.locator(ASSISTANT).last).to_have_attribute("data-markdown", "".join(pieces[:seq]))
    assert page.evaluate("typeof window.__xss") == "undefined"
    messages = page.get_by_test_id("messages")
    expect(messages.locator("img, script")).to_have_count(0)
    expect(page.locator('a[href^="javascript:" i]')).to_have_count(0)
    assert "<img src=x" in page.locator(ASSISTANT).last.inner_text()  # shown as text
    finish(stack, reply_id, pieces)
    wait_finished(page.locator(ASSISTANT).last)
    assert page.evaluate("typeof window.__xss") == "undefined"


def test_the_counter_shows_tokens_and_an_over_long_message_stays_whole_and_editable(page):
    new_chat(page, max_tokens=4)
    box = page.get_by_test_id("composer-input")
    count = page.get_by_test_id("composer-count")
    box.fill("Hello there")
    expect(count).to_have_text(re.compile(r"^≈ \d+ / 1,024 tokens"))
    pasted = "word " * 4000  # 20,000 characters: over the 16,000-character limit
    box.fill(pasted)
    assert len(box.input_value()) == 20_000  # nothing cut
    expect(count).to_contain_text("20,000 characters; the limit is 16,000")
    expect(page.get_by_test_id("send")).to_be_disabled()
    box.press("Enter")
    expect(page.locator(USER)).to_have_count(0)
    assert box.input_value() == pasted

    box.fill("word " * 1000)  # 5,000 characters: under the characters, over the model's 1,024 tokens
    expect(count).to_contain_text("accepts at most 1,024")
    expect(box).to_have_attribute("aria-invalid", "true")
    box.press("Enter")
    expect(page.get_by_test_id("error-text")).to_contain_text("tokens")
    expect(page.locator(USER)).to_have_count(0)

    box.fill("Short again")
    expect(count).not_to_contain_text("accepts at most")
    expect(page.get_by_test_id("send")).to_be_enabled()


def test_a_message_too_long_in_real_tokens_is_refused_before_anything_is_stored(page):
    """Issue 25, item 6: 600 emoji pass the characters-per-token estimate but are 1,200 tokens. The
    socket counts them with the model's tokenizer: no conversation, no error reply, the text stays."""
    new_chat(page, max_tokens=4)
    text = "\N{SLIGHTLY SMILING FACE}" * 600
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("error-banner")).to_contain_text("accepts at most 1024")
    expect(page.locator(ASSISTANT)).to_have_count(0)
    expect(page.locator(USER)).to_have_count(0)
    assert page.get_by_test_id("composer-input").input_value() == text


def test_keyboard_enter_shift_enter_escape_and_new_chat(page):
    new_chat(page, max_tokens=4000)
    box = page.get_by_test_id("composer-input")
    box.type("line one")
    box.press("Shift+Enter")
    box.type("line two")
    assert box.input_value() == "line one\nline two"
    expect(page.locator(USER)).to_have_count(0)

    box.press("Enter")
    reply = page.locator(ASSISTANT).last
    expect(reply).to_have_attribute("data-status", "generating")
    expect(box).to_have_value("")
    expect(page.locator(USER).last).to_contain_text("line two")
    expect(page.get_by_test_id("reply-status")).to_have_text("The assistant is replying…")
    page.keyboard.press("Escape")
    wait_finished(reply)
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(page.get_by_test_id("reply-status")).to_have_text("The reply stopped.")
    expect(box).to_be_focused()

    assert re.search(r"/c/\d+/$", page.url)
    page.keyboard.press("Control+Shift+O")
    expect(page).to_have_url(re.compile(r"/$"))
    expect(page.get_by_test_id("conversation-title")).to_have_text("New chat")
    expect(page.get_by_test_id("composer-input")).to_be_focused()


def test_the_buttons_and_the_live_region_have_names_a_screen_reader_reads(page):
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("textbox", name=re.compile("^Message"))).to_be_visible()
    expect(page.get_by_test_id("reply-status")).to_have_attribute("aria-live", "polite")
    expect(page.get_by_test_id("stop")).to_have_attribute("aria-keyshortcuts", "Escape")
    expect(page.get_by_test_id("new-chat")).to_have_attribute("aria-keyshortcuts", "Control+Shift+O")


def test_the_settings_panel_shows_the_values_in_force(page):
    page.get_by_test_id("settings-toggle").click()
    expect(page.get_by_test_id("temperature")).to_have_attribute("placeholder", "0 (default)")
    for name in ("top-p", "top-k", "min-p", "repetition-penalty", "max-tokens"):
        placeholder = page.get_by_test_id(name).get_attribute("placeholder")
        assert re.fullmatch(r"[\d.]+ \(default\)", placeholder), (name, placeholder)


def test_a_conversation_whose_model_was_disabled_says_so_and_offers_the_default(page, stack):
    conversation = [
        line.split()[1]
        for line in stack.run_manage("shell", "-c", DISABLED.format(username=USERNAME)).splitlines()
        if line.startswith("ID ")
    ][-1]
    page.goto(f"/c/{conversation}/")
    wait_connected(page)
    notice = page.get_by_test_id("model-notice")
    expect(notice).to_contain_text("Retired, was disabled by an administrator")
    box = page.get_by_test_id("composer-input")
    box.fill("Hello")
    box.press("Enter")
    expect(page.get_by_test_id("error-text")).to_contain_text("model was disabled")
    expect(page.locator(USER)).to_have_count(0)
    assert box.input_value() == "Hello"

    page.get_by_test_id("use-default-model").click()
    expect(notice).to_be_hidden()
    expect(page.get_by_test_id("model-select")).to_have_value("tiny")
    page.get_by_test_id("settings-toggle").click()
    page.get_by_test_id("max-tokens").fill("4")
    page.get_by_test_id("settings-toggle").click()
    box.press("Enter")
    reply = page.locator(ASSISTANT).last
    wait_finished(reply)
    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply.locator(".message-meta")).to_contain_text("tiny")


def test_a_conversation_exports_as_markdown_and_json_and_delete_all_empties_the_list(page, stack):
    page.goto("/")
    expect(page.get_by_test_id("export-links")).to_be_hidden()  # a new chat has nothing to export yet
    stream_scripted_reply(page, stack)
    with page.expect_download() as md:
        page.get_by_test_id("export-md").click()
    text = open(md.value.path(), encoding="utf-8").read()
    assert text.startswith("# ") and "".join(REPLY) in text
    with page.expect_download() as js:
        page.get_by_test_id("export-json").click()
    data = json.loads(open(js.value.path(), encoding="utf-8").read())
    assert data["messages"][-1]["content"] == "".join(REPLY) and md.value.suggested_filename.endswith(".md")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("delete-all").click()
    page.wait_for_url(re.compile(r"/$"))
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    expect(page.locator("#conversation-empty")).to_be_visible()


def test_a_phone_gets_a_real_layout_with_no_page_wider_than_the_screen(browser, stack):
    """Issue 25, item 5: at 390x844 the page was 442 px wide ("Log out" off-screen), the message box
    about 140 px and the settings a small scroll box."""
    stack.run_manage("shell", "-c", "from django.contrib.auth.models import Permission, User\n"
                     f"User.objects.get(username={USERNAME!r}).user_permissions.add("
                     "Permission.objects.get(codename='finetune'))\n")  # fmt: skip
    with logged_in_page(browser, stack, viewport={"width": 390, "height": 844}) as phone:
        for path in ("/", "/finetune/", "/evals/", "/settings/api-keys/"):
            phone.goto(path)
            width = phone.evaluate("document.documentElement.scrollWidth")
            wide = phone.evaluate("""() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > 391)
                .slice(0, 6).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
            assert width <= 390, (path, width, wide)
        phone.goto("/")
        wait_connected(phone)
        box = phone.get_by_test_id("composer-input").bounding_box()
        assert box["width"] >= 200, box  # the message box takes the width (was about 140 px)
        logout = phone.get_by_test_id("logout")
        expect(logout).to_be_hidden()  # folded into the menu
        phone.get_by_test_id("menu-toggle").click()
        expect(logout).to_be_visible()
        assert logout.bounding_box()["x"] + logout.bounding_box()["width"] <= 390
        phone.keyboard.press("Escape")
        expect(logout).to_be_hidden()
        phone.get_by_test_id("settings-toggle").click()
        sheet = phone.get_by_test_id("settings-panel").bounding_box()
        assert sheet["width"] >= 380 and sheet["height"] > 300, sheet  # a sheet, not a small box


def test_a_finished_reply_s_feedback_row_is_scrolled_into_view(page):
    """Issue 25, item 9: a finished reply was scrolled about 34 px short, its feedback row hidden
    behind the composer."""
    new_chat(page, max_tokens=60)
    box = page.get_by_test_id("composer-input")
    for text in ("Tell me about the sea.", "And the mountains?", "And the rivers?"):
        box.fill(text)
        box.press("Enter")
        wait_finished(page.locator(ASSISTANT).last)
    feedback = page.locator(ASSISTANT).last.get_by_test_id("feedback")
    expect(feedback).to_be_visible()
    bottom = feedback.bounding_box()["y"] + feedback.bounding_box()["height"]
    composer = page.get_by_test_id("composer").bounding_box()["y"]
    assert bottom <= composer + 1, (bottom, composer)
