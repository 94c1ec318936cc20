"""The admin pages an operator reads most, in a real browser at 1280x800 (Debian's chromium
through Playwright) against the real site (daphne, Redis, the packaged default model's row; no
inference worker is needed): every column fits the screen, and replies are shown rendered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
SHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"
# How many lines an element's text takes: the distinct tops of its text's line boxes.
LINES_JS = """el => {
  const range = document.createRange();
  range.selectNodeContents(el);
  return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
}"""
ROOT, PASSWORD = "browser-root", "browser-root-password-1"

# The logs an operator opens: a Markdown conversation with a regenerated reply and feedback, and
# a user's own fine-tuned model with a long name next to the packaged default.
SEED = """
from django.contrib.auth import get_user_model
from chat import replies, turns
from chat.models import Conversation, Feedback, Message
from chat.rendering import render_markdown
from inference.models import LanguageModel
from inference.protocol import Done

alice = get_user_model().objects.create_user("alice-with-a-rather-long-username", password="x-pass-123456")
default = LanguageModel.objects.get(is_default=True)
LanguageModel.objects.create(
    name="Alice's lighthouse keeper, fine-tuned", slug="alices-lighthouse-keeper-ft12", owner=alice,
    published=True, location="/nonexistent/tuned/alices-lighthouse-keeper-ft12", backend="transformers",
)
chat = Conversation.objects.create(user=alice, title="Markdown please", model=default)
question = "Show me **bold**, a list and code"
Message.objects.create(conversation=chat, role="user", content=question, html=render_markdown(question))
first = Message.objects.create(conversation=chat, role="assistant", content="**No**", html=render_markdown("**No**"),
                               model=default, finish_reason="stop", parent=chat.messages.get())
turn = turns.regenerate(alice, first.pk)
turns.drop_replaced(turn)
answer = "Here is **bold** text.\\n\\n- one\\n- two\\n\\n```\\nprint('hi')\\n```"
replies.end(turn.reply.pk, content=answer, done=Done("stop", prompt_tokens=30, completion_tokens=20, ttft_ms=40.0,
            tokens_per_s=25.0))
Feedback.objects.create(message_id=turn.reply.pk, user=alice, rating=1, comment="Nice list")
print(chat.pk)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from tests.stack import LiveStack

    live = LiveStack(tmp_path_factory.mktemp("admin-browser-stack"), workers=0)
    live.start()
    try:
        live.create_user(ROOT, PASSWORD, superuser=True)
        live.conversation_id = int(live.run_manage("shell", "-c", SEED).strip().splitlines()[-1])
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def page(stack):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=stack.url, viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        page = context.new_page()
        page.goto("/admin/login/")
        page.fill("#id_username", ROOT)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        expect(page).to_have_url(re.compile(r"/admin/$"))
        yield page
        browser.close()


def assert_columns_fit(page: Page, columns: list[str]) -> None:
    """Every header of the change list is shown whole: inside the viewport and inside the list's
    own box (Django's list scrolls sideways rather than overflow, hiding the last columns), and
    `columns` are among them."""
    headers = page.locator("#result_list thead th")
    names = headers.evaluate_all("ths => ths.map(th => th.className)")
    for column in columns:
        assert any(f"column-{column}" in name for name in names), (column, names)
    results = page.locator("#changelist .results").bounding_box()
    right = min(VIEWPORT["width"], results["x"] + results["width"])
    for i in range(headers.count()):
        box = headers.nth(i).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= right + 0.5, (names[i], box, right)
    scroll = page.locator("#changelist .results").evaluate("el => el.scrollWidth - el.clientWidth")
    assert scroll <= 0, f"the list scrolls sideways by {scroll} px"
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]


def test_the_model_list_shows_enabled_and_default_inside_the_screen_with_a_one_line_source(page):
    page.goto("/admin/inference/languagemodel/")
    page.screenshot(path=str(SHOTS / "languagemodel-list.png"), full_page=True)
    assert_columns_fit(page, ["name", "short_source", "enabled", "is_default"])
    cells = page.locator("#result_list td.field-short_source")
    assert set(cells.all_inner_texts()) == {"packaged", "local"}
    assert cells.evaluate_all(f"tds => tds.map({LINES_JS})") == [1] * cells.count()  # one line each


def test_the_message_list_shows_the_user_and_the_content_inside_the_screen(page):
    page.goto("/admin/chat/message/")
    page.screenshot(path=str(SHOTS / "message-list.png"), full_page=True)
    assert_columns_fit(page, ["user", "excerpt", "role", "created_at"])
    users = page.locator("#result_list td.field-user").all_inner_texts()
    assert set(users) == {"alice-with-a-rather-long-username"}
    excerpts = page.locator("#result_list .field-excerpt").all_inner_texts()
    assert "Here is bold text. one two print('hi')" in excerpts
    assert "**" not in page.locator("#result_list").inner_text()


def test_the_conversation_and_feedback_lists_fit_the_screen(page):
    page.goto("/admin/chat/conversation/")
    page.screenshot(path=str(SHOTS / "conversation-list.png"), full_page=True)
    assert_columns_fit(page, ["title", "user", "model", "deleted"])
    page.goto("/admin/chat/feedback/")
    page.screenshot(path=str(SHOTS / "feedback-list.png"), full_page=True)
    assert_columns_fit(page, ["rating", "user", "reply_model", "reply", "comment_excerpt", "edited"])
    assert page.locator("#result_list td.field-reply_model").all_inner_texts() == ["smollm2-135m-instruct"]


def test_the_conversation_page_renders_the_thread_as_html_never_as_raw_markdown(page, stack):
    page.goto(f"/admin/chat/conversation/{stack.conversation_id}/change/")
    thread = page.get_by_test_id("thread")
    expect(thread.locator("strong", has_text="bold").first).to_be_visible()
    two = thread.locator("li", has_text="two")
    expect(two).to_be_visible()
    assert two.evaluate("li => getComputedStyle(li).listStyleType") == "disc"  # a bulleted list, as in the chat
    indent = two.bounding_box()["x"] - thread.locator(".chat-log-body").last.bounding_box()["x"]
    assert 0 < indent < 60, indent
    expect(thread.locator("pre code")).to_contain_text("print('hi')")
    assert "**" not in page.locator("#content").inner_text()
    expect(thread.locator(".chat-log-replaced")).to_have_count(1)
    thread.get_by_text("Reproducibility record").last.click()
    page.screenshot(path=str(SHOTS / "conversation-thread.png"), full_page=True)
    expect(thread.locator(".chat-log-record").last).to_contain_text("30 in, 20 out")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"]


def test_a_reply_page_shows_it_rendered_with_its_reproducibility_record(page, stack):
    page.goto("/admin/chat/message/?role__exact=assistant&hidden=no")
    page.locator("#result_list .field-excerpt a").first.click()
    page.screenshot(path=str(SHOTS / "message-page.png"), full_page=True)
    content = page.locator("#content")
    expect(content.locator(".chat-log-body strong", has_text="bold")).to_be_visible()
    expect(content.locator(".chat-log-record")).to_contain_text("smollm2-135m-instruct")
    expect(content.locator(".chat-log-record")).to_contain_text("25.0 tokens/s")
    assert "**" not in content.inner_text()
    assert page.evaluate("document.documentElement.scrollWidth") <= VIEWPORT["width"]


def test_the_admin_home_s_serving_links_stay_on_one_line(page):
    """Issue 25, item 14: they wrapped one letter per line."""
    page.goto("/admin/")
    for name in ("Inference metrics", "Usage dashboard"):
        link = page.get_by_role("link", name=name)
        box = link.bounding_box()
        line = link.evaluate("a => parseFloat(getComputedStyle(a).lineHeight) || 20")
        assert box["height"] <= line * 1.5 and box["width"] > box["height"], (name, box)


def test_the_api_keys_page_is_styled_and_copies_a_new_key(page, stack):
    """Issue 25, item 14: the page was unstyled, with no copy button."""
    page.goto("/settings/api-keys/")
    page.get_by_test_id("key-name").fill("browser")
    page.get_by_test_id("create-key").click()
    key = page.get_by_test_id("new-key")
    expect(key).to_have_value(re.compile(r"^sk-"))
    copy = page.get_by_test_id("copy-key")
    expect(copy).to_be_visible()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    copy.click()
    expect(copy).to_have_text("Copied")
    main = page.locator("main.api-keys").bounding_box()
    assert main["x"] >= 8  # not against the left edge
    create = page.get_by_test_id("create-key")
    background = create.evaluate("b => getComputedStyle(b).backgroundColor")
    assert background not in ("rgba(0, 0, 0, 0)", "rgb(239, 239, 239)"), background  # not the browser's default
