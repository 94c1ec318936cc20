"""The chat page in a real browser (Debian's chromium through Playwright) against the real stack:
daphne, Redis and an inference worker running the packaged default model (SmolLM2-135M).

Every test logs in through the login form. Replies are kept short (max_tokens from the settings
panel) wherever the length of the stream does not matter, so the file runs in a few minutes on
a 2-core CPU.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from playwright.sync_api import Locator, Page, expect

from . import browser_helpers
from .browser_helpers import (
    ASSISTANT,
    body_text,
    conversation_id,
    live_stack,
    log_in,
    message_by_id,
    new_chat,
    new_page,
    send,
    wait_connected,
    wait_finished,
    wait_for_text,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG_PROMPT = "Write a long story about a dragon."

# Samples the latest assistant message every 50 ms: (id, status, text). Installed as an init
# script, it also runs after a reload, before the page's own script. `text` is the reply's
# Markdown as streamed (data-markdown; the body shows its live rendering), else the body's text.
SAMPLER_JS = """
(() => {
  window.__samples = [];
  setInterval(() => {
    const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
    const last = all[all.length - 1];
    if (!last) return;
    const body = last.querySelector('.message-body');
    window.__samples.push({
      id: last.getAttribute('data-message-id'),
      status: last.getAttribute('data-status'),
      text: last.getAttribute('data-markdown') ?? (body ? body.textContent : ''),
    });
  }, 50);
})();
"""

XSS_PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=1</script>",
    "[click](javascript:window.__xss=1)",
    "![img](javascript:window.__xss=1)",
    '<a href="javascript:window.__xss=1">x</a>',
]


# --- fixtures (chromium and a logged-in page: tests/browser_helpers.py) -------------------------
browser = browser_helpers.browser
page = browser_helpers.page


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The real stack with the packaged default model."""
    with live_stack(tmp_path_factory.mktemp("browser-stack")) as live:
        yield live


# --- helpers ---------------------------------------------------------------------------------
def generating_samples(page: Page, message_id: str) -> list[str]:
    samples = page.evaluate("window.__samples || []")
    return [s["text"] for s in samples if s["id"] == message_id and s["status"] == "generating"]


def completion_tokens(message: Locator) -> int:
    match = re.search(r"(\d+) tokens", message.get_by_test_id("message-stats").inner_text())
    assert match, "the message shows no token count"
    return int(match.group(1))


# --- tests -----------------------------------------------------------------------------------
def test_login_form_rejects_a_wrong_password(browser, stack):
    page = new_page(browser, stack)
    try:
        log_in(page, password="not-the-password")
        expect(page.get_by_test_id("login-error")).to_be_visible()
        expect(page).to_have_url(re.compile(r"/accounts/login/"))
    finally:
        page.context.close()


def test_a_reply_streams_in_several_updates_then_shows_rendered_html(page):
    new_chat(page, max_tokens=48)
    page.evaluate(SAMPLER_JS)
    reply = send(page, LONG_PROMPT)
    message_id = reply.get_attribute("data-message-id")
    wait_finished(reply)

    expect(reply).to_have_attribute("data-status", "complete")
    partial_lengths = sorted({len(text) for text in generating_samples(page, message_id) if text})
    assert len(partial_lengths) >= 2, f"saw {partial_lengths} partial lengths before the reply ended"
    # Rendered by the server: Markdown blocks, not the streamed plain text.
    body = reply.get_by_test_id("message-body")
    assert body.locator("p, ul, ol, pre, h1, h2, h3, h4, blockquote, table").count() >= 1
    assert body_text(reply)
    expect(reply.get_by_test_id("message-stats")).to_contain_text("tokens")
    expect(reply.get_by_test_id("message-stats")).to_contain_text("tok/s")
    # The new conversation got its own address and a place in the sidebar.
    conv = conversation_id(page)
    expect(page.locator(f'[data-testid="conversation-item"][data-conversation-id="{conv}"]')).to_be_visible()
    expect(page.get_by_test_id("send")).to_be_enabled()


def test_stop_keeps_the_partial_text_also_after_a_reload(page):
    new_chat(page, max_tokens=600)
    reply = send(page, LONG_PROMPT)
    wait_for_text(reply, 40)
    page.get_by_test_id("stop").click()

    expect(reply).to_have_attribute("data-status", "stopped", timeout=30_000)
    expect(reply.get_by_test_id("message-status")).to_have_text("stopped")
    stopped_text = body_text(reply)
    assert stopped_text
    assert completion_tokens(reply) < 600
    expect(page.get_by_test_id("stop")).to_be_hidden()
    expect(page.get_by_test_id("send")).to_be_enabled()

    page.reload()
    wait_connected(page)
    expect(reply).to_have_attribute("data-status", "stopped")
    expect(reply.get_by_test_id("message-status")).to_have_text("stopped")
    assert body_text(reply) == stopped_text


def test_a_reply_keeps_streaming_after_a_reload_and_finishes(page):
    new_chat(page, max_tokens=200)
    reply = send(page, LONG_PROMPT)
    message_id = reply.get_attribute("data-message-id")
    wait_for_text(reply, 20)

    page.add_init_script(SAMPLER_JS)
    page.reload()
    wait_finished(reply)

    expect(reply).to_have_attribute("data-status", "complete")
    expect(reply).to_have_attribute("data-finish-reason", re.compile(r"^(stop|length)$"))
    assert body_text(reply)
    streamed = generating_samples(page, message_id)
    assert len({len(text) for text in streamed if text}) >= 2, "the reply did not go on streaming after the reload"
    # The replay after the reload starts from seq 1 and no delta is shown twice: what the page
    # showed while streaming is a prefix of the stored reply.
    assert stored_content(page, message_id).startswith(streamed[-1]), (
        "the streamed text is not a prefix of the stored reply"
    )
    expect(page.locator('[data-status="generating"], [data-status="queued"]')).to_have_count(0)
    expect(page.get_by_test_id("stop")).to_be_hidden()


class SocketProxy:
    """Routes the page's chat sockets through Playwright, so a test can lose frames in flight
    and drop the connection (the page then reconnects through the proxy again)."""

    def __init__(self, page: Page) -> None:
        self.connections: list = []
        self.drop_deltas = False
        self.drop_next_started = False
        page.route_web_socket(re.compile(r"/ws/chat/$"), self._route)

    def _route(self, ws) -> None:
        server = ws.connect_to_server()

        def from_server(message) -> None:
            text = str(message)
            if self.drop_deltas and '"chat.delta"' in text:
                return
            if self.drop_next_started and '"chat.started"' in text:
                self.drop_next_started = False
                ws.close(code=4000, reason="test: connection lost")
                return
            ws.send(message)

        server.on_message(from_server)
        self.connections.append(ws)

    def drop(self) -> None:
        self.connections[-1].close(code=4000, reason="test: connection lost")


def stored_content(page: Page, message_id: str) -> str:
    stored = page.evaluate(
        """async (conv) => (await (await fetch(`/api/conversations/${conv}/messages/`)).json()).messages""",
        conversation_id(page),
    )
    return next(m["content"] for m in stored if str(m["id"]) == message_id)


def test_a_dropped_connection_resumes_without_gaps_or_repeats(page):
    proxy = SocketProxy(page)
    page.add_init_script(SAMPLER_JS)
    new_chat(page, max_tokens=150)
    reply = send(page, LONG_PROMPT)
    message_id = reply.get_attribute("data-message-id")
    wait_for_text(reply, 20)

    proxy.drop_deltas = True
    page.wait_for_timeout(500)  # deltas sent now never reach the page
    proxy.drop()
    proxy.drop_deltas = False
    wait_finished(reply)

    assert len(proxy.connections) >= 2, "the page did not reconnect"
    expect(reply).to_have_attribute("data-status", "complete")
    streamed = generating_samples(page, message_id)
    assert streamed, "nothing was seen streaming"
    assert stored_content(page, message_id).startswith(streamed[-1]), (
        "deltas were lost or shown twice across the reconnect"
    )


def test_a_reply_started_just_before_the_connection_dropped_is_found_after_reconnecting(page):
    proxy = SocketProxy(page)
    new_chat(page, max_tokens=8)
    wait_finished(send(page, "Hello!"))

    # The server starts the reply, but its chat.started is lost with the connection.
    proxy.drop_next_started = True
    page.get_by_test_id("composer-input").fill("What is the capital of France?")
    page.get_by_test_id("send").click()

    second = page.locator(ASSISTANT).nth(1)
    wait_finished(second)
    assert len(proxy.connections) >= 2, "the page did not reconnect"
    expect(second).to_have_attribute("data-status", "complete")
    users = page.locator('[data-testid="message"][data-role="user"]')
    expect(users).to_have_count(2)
    expect(users.last).to_contain_text("capital of France")
    expect(page.get_by_test_id("error-banner")).to_be_hidden()
    expect(page.get_by_test_id("send")).to_be_enabled()


def _assert_no_injected_markup(page: Page) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined"
    messages = page.get_by_test_id("messages")
    expect(messages.locator("script")).to_have_count(0)
    expect(messages.locator("img[onerror]")).to_have_count(0)
    expect(page.locator('a[href^="javascript:" i]')).to_have_count(0)
    expect(page.locator('[src^="javascript:" i]')).to_have_count(0)
    handlers = page.evaluate(
        """() => [...document.querySelectorAll('#messages *')]
            .flatMap((el) => [...el.attributes].map((a) => a.name))
            .filter((name) => name.toLowerCase().startsWith('on'))"""
    )
    assert handlers == []


def test_markup_in_user_and_model_messages_is_never_executed(page):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    new_chat(page, max_tokens=8)
    for payload in XSS_PAYLOADS:
        reply = send(page, payload)
        wait_finished(reply)
        user_messages = page.locator('[data-testid="message"][data-role="user"]')
        assert body_text(user_messages.last)
        _assert_no_injected_markup(page)
        page.reload()
        wait_connected(page)
        wait_finished(reply)
        _assert_no_injected_markup(page)
    expect(page.locator('[data-testid="message"][data-role="user"]')).to_have_count(len(XSS_PAYLOADS))
    # Raw HTML is shown as text (the server renders it escaped).
    assert "<script>window.__xss=1</script>" in page.get_by_test_id("messages").inner_text()
    assert dialogs == []


def test_sidebar_renames_searches_and_deletes_a_conversation(page, stack):
    new_chat(page, max_tokens=4)
    first = send(page, "Say hello.")
    wait_finished(first)
    conv = conversation_id(page)
    # The new conversation's export links, without a reload (issue 25, item 8).
    expect(page.get_by_test_id("export-md")).to_have_attribute("href", f"/c/{conv}/export.md")
    expect(page.get_by_test_id("export-links")).to_be_visible()

    # Regenerate replaces the latest reply.
    page.get_by_test_id("regenerate").click()
    expect(first).to_have_count(0)
    second = page.locator(ASSISTANT).last
    wait_finished(second)
    expect(page.locator(ASSISTANT)).to_have_count(1)

    item = page.locator(f'[data-testid="conversation-item"][data-conversation-id="{conv}"]')
    marker = uuid.uuid4().hex[:10]
    title = f"Dragon notes {marker}"
    item.get_by_test_id("rename").click()
    item.get_by_test_id("rename-input").fill(title)
    item.get_by_test_id("rename-input").press("Enter")
    expect(item.get_by_test_id("conversation-link")).to_have_text(title)
    expect(page.get_by_test_id("conversation-title")).to_have_text(title)
    page.reload()
    wait_connected(page)
    expect(item.get_by_test_id("conversation-link")).to_have_text(title)
    expect(page.locator(ASSISTANT)).to_have_count(1)

    search = page.get_by_test_id("search")
    search.fill(marker)
    expect(page.get_by_test_id("conversation-item")).to_have_count(1)
    expect(page.get_by_test_id("conversation-item")).to_have_attribute("data-conversation-id", conv)
    search.fill(f"no such conversation {marker}")
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)
    search.fill("")
    expect(item).to_be_visible()

    # A settings value the server refuses is explained next to its field.
    page.get_by_test_id("settings-toggle").click()
    page.get_by_test_id("temperature").fill("5")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("temperature-error")).to_contain_text("temperature must be from 0 to 2")
    expect(page.get_by_test_id("settings-error")).to_contain_text("Temperature")

    page.once("dialog", lambda dialog: dialog.accept())
    item.get_by_test_id("delete").click()
    expect(page).to_have_url(stack.url)
    expect(item).to_have_count(0)
    page.get_by_test_id("search").fill(marker)
    expect(page.get_by_test_id("conversation-item")).to_have_count(0)

    # A new chat's settings are checked by the same bounds before "Will be saved" (issue 25, item 7).
    if not page.get_by_test_id("temperature").is_visible():
        page.get_by_test_id("settings-toggle").click()
    page.get_by_test_id("temperature").fill("5")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("temperature-error")).to_contain_text("temperature must be from 0 to 2")
    expect(page.get_by_test_id("settings-status")).not_to_contain_text("Will be saved")
    page.get_by_test_id("temperature").fill("")


def test_settings_panel_keeps_top_k_and_the_repetition_penalty_after_a_reload(page):
    sent: list[dict] = []

    def record_frames(ws) -> None:
        server = ws.connect_to_server()

        def from_page(message) -> None:
            sent.append(json.loads(str(message)))
            server.send(message)

        ws.on_message(from_page)

    page.route_web_socket(re.compile(r"/ws/chat/$"), record_frames)
    new_chat(page, max_tokens=4)
    wait_finished(send(page, "Hi"))
    conversation_id(page)

    page.get_by_test_id("settings-toggle").click()
    more = page.get_by_test_id("more-settings")
    expect(page.get_by_test_id("top-k")).to_be_hidden()  # folded under "More settings"
    more.locator("summary").click()
    top_k, penalty = page.get_by_test_id("top-k"), page.get_by_test_id("repetition-penalty")
    # An empty field shows the model's default; the help comes from the server's rules.
    expect(top_k).to_have_attribute("placeholder", re.compile(r"^\d+ \(default\)$"))
    expect(penalty).to_have_attribute("placeholder", re.compile(r"^[\d.]+ \(default\)$"))
    expect(top_k).to_have_attribute("title", re.compile(r"k likeliest tokens"))
    expect(page.locator('label[for="repetition-penalty"]')).to_have_text("Repetition penalty")
    top_k.fill("12")
    penalty.fill("1.3")
    page.get_by_test_id("seed").fill("42")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-status")).to_have_text("Saved.")

    page.reload()
    wait_connected(page)
    page.get_by_test_id("settings-toggle").click()
    expect(more).to_have_attribute("open", "")  # a setting in it is set
    expect(top_k).to_have_value("12")
    expect(penalty).to_have_value("1.3")
    expect(page.get_by_test_id("max-tokens")).to_have_value("4")
    expect(page.get_by_test_id("seed")).to_have_value("")  # the seed is not stored

    # A value out of range is refused by the server and explained next to its field.
    top_k.fill("5000")
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("top-k-error")).to_contain_text("top_k must be from 0 to 1000")
    expect(top_k).to_have_attribute("aria-invalid", "true")
    top_k.fill("12")
    expect(page.get_by_test_id("top-k-error")).to_be_hidden()

    # The seed goes with the message, next to the saved settings.
    page.get_by_test_id("seed").fill("42")
    wait_finished(send(page, "Hello again"))
    frame = [f for f in sent if f.get("type") == "chat.send"][-1]
    assert frame["params"] == {"top_k": 12, "repetition_penalty": 1.3, "max_tokens": 4, "seed": 42}
    page.reload()
    wait_connected(page)
    page.get_by_test_id("settings-toggle").click()
    expect(top_k).to_have_value("12")


def test_phone_layout_hides_the_sidebar_and_can_send(browser, stack):
    page = new_page(browser, stack, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        log_in(page)
        composer = page.get_by_test_id("composer-input")
        expect(composer).to_be_in_viewport()
        expect(page.get_by_test_id("send")).to_be_in_viewport()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        sidebar = page.get_by_test_id("sidebar")
        expect(sidebar).not_to_be_in_viewport()
        page.get_by_test_id("sidebar-toggle").click()
        expect(sidebar).to_be_in_viewport()
        expect(page.get_by_test_id("new-chat")).to_be_visible()
        page.locator("#sidebar-backdrop").click(position={"x": 360, "y": 300})
        expect(sidebar).not_to_be_in_viewport()

        new_chat(page, max_tokens=8)
        reply = send(page, "What is the capital of France?")
        wait_finished(reply)
        expect(reply).to_have_attribute("data-status", "complete")
        assert body_text(reply)
        expect(composer).to_be_in_viewport()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        page.context.close()


def test_a_reply_whose_worker_dies_is_shown_as_interrupted(page, stack):
    """Last in the file: it kills the worker (and starts it again for whatever runs next)."""
    new_chat(page, max_tokens=600)
    reply = send(page, LONG_PROMPT)
    wait_for_text(reply, 20)
    stack.kill_worker(0)
    try:
        expect(reply).to_have_attribute("data-status", "interrupted", timeout=60_000)
        expect(reply.get_by_test_id("message-status")).to_contain_text("interrupted")
        assert body_text(reply)
        expect(page.get_by_test_id("send")).to_be_enabled()
        page.reload()
        expect(reply).to_have_attribute("data-status", "interrupted")
        assert body_text(reply)
    finally:
        stack.start_worker(0)


def test_two_tabs_of_one_user_stay_in_sync(page, stack):
    """Send in one tab: the other shows the message and the streaming reply, and can stop it;
    a rename and a new conversation reach the other tab's sidebar."""
    other = page.context.new_page()  # the same browser session: the user's second tab
    new_chat(page, max_tokens=600)
    wait_finished(send(page, "Say hi."))
    conversation = conversation_id(page)
    other.goto(f"/c/{conversation}/")
    wait_connected(other)

    reply = send(page, LONG_PROMPT)
    mirrored = message_by_id(other, reply.get_attribute("data-message-id"))
    wait_for_text(mirrored, 20)
    expect(other.locator('[data-testid="message"][data-role="user"]').last).to_have_text(re.compile("dragon"))
    other.get_by_test_id("stop").click()
    expect(reply).to_have_attribute("data-status", "stopped", timeout=30_000)
    expect(mirrored).to_have_attribute("data-status", "stopped", timeout=30_000)

    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    page.request.post(
        f"/api/conversations/{conversation}/",
        data=json.dumps({"title": "Renamed in one tab"}),
        headers={"X-CSRFToken": token, "Content-Type": "application/json", "Referer": stack.url},
    )
    item = other.locator(f'[data-testid="conversation-item"][data-conversation-id="{conversation}"]')
    expect(item.get_by_test_id("conversation-link")).to_have_text("Renamed in one tab")
    expect(other.get_by_test_id("conversation-title")).to_have_text("Renamed in one tab")

    page.goto("/")
    wait_connected(page)
    wait_finished(send(page, "A brand new chat."))
    fresh = conversation_id(page)
    expect(other.locator(f'[data-testid="conversation-item"][data-conversation-id="{fresh}"]')).to_be_visible()

    # Deleted in one tab: the other, showing it, goes to a new chat with the message being typed
    # and says why (issue 25, item 8).
    other.goto(f"/c/{fresh}/")
    wait_connected(other)
    other.get_by_test_id("composer-input").fill("half a thought")
    page.request.post(f"/api/conversations/{fresh}/delete/", data="{}",
                      headers={"X-CSRFToken": token, "Content-Type": "application/json", "Referer": stack.url})  # fmt: skip
    expect(other).to_have_url(stack.url, timeout=15_000)
    expect(other.get_by_test_id("error-banner")).to_contain_text("deleted in another tab")
    expect(other.get_by_test_id("composer-input")).to_have_value("half a thought")
    other.close()
