"""Edit and resend (a fork) and reply versions ("‹ 2 / 3 ›") in a real browser (Debian's
chromium through Playwright) against the real stack: daphne, Redis and an inference worker
serving the tiny test model (its replies are random tokens: the tests look at which messages are
shown, not at what the model says)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from . import browser_helpers
from .browser_helpers import (
    ASSISTANT,
    USER,
    body_text,
    live_stack,
    logged_in_page,
    new_chat,
    send,
    wait_connected,
    wait_finished,
)

pytestmark = [pytest.mark.browser, pytest.mark.stack]

browser = browser_helpers.browser
page = browser_helpers.page

XSS = '<img src=x onerror="window.__xss=1"> <script>window.__xss=1</script> **bold**'


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    with live_stack(tmp_path_factory.mktemp("versions-stack"), model_dir=tiny_model_dir) as live:
        yield live


def users(page: Page) -> list[str]:
    return [text.strip() for text in page.locator(USER).locator('[data-testid="message-body"]').all_inner_texts()]


def edit(page: Page, index: int, text: str, taken: bool = True) -> None:
    """Edit the index-th user message shown and send it; with `taken`, wait until the server
    took it (the old message and its box are gone, the new reply is there)."""
    message = page.locator(USER).nth(index)
    old_id = message.get_attribute("data-message-id")
    message.get_by_test_id("edit-message").click()
    box = message.get_by_test_id("edit-input")
    expect(box).to_be_focused()
    box.fill(text)
    message.get_by_test_id("edit-send").click()
    if taken:
        expect(page.locator(f'{USER}[data-message-id="{old_id}"]')).to_have_count(0)
        expect(page.get_by_test_id("edit-form")).to_have_count(0)


def versions_of(page: Page, selector: str, index: int):
    return page.locator(selector).nth(index).get_by_test_id("versions")


def test_editing_a_message_forks_and_the_versions_page_back_and_forth_also_after_a_reload(page: Page):
    new_chat(page, max_tokens=6)
    wait_finished(send(page, "Name a dog"))
    wait_finished(send(page, "Name a cat"))
    assert users(page) == ["Name a dog", "Name a cat"]

    first_box = page.locator(USER).nth(1)
    first_box.get_by_test_id("edit-message").click()
    expect(first_box.get_by_test_id("edit-input")).to_have_value("Name a cat")
    expect(first_box.get_by_test_id("edit-message")).to_be_hidden()  # while editing (issue 25, item 9)
    first_box.get_by_test_id("edit-cancel").click()
    expect(first_box.get_by_test_id("edit-input")).to_have_count(0)
    expect(first_box.get_by_test_id("edit-message")).to_be_visible()

    edit(page, 1, "Name a bird")
    expect(page.locator(USER)).to_have_count(2)
    wait_finished(page.locator(ASSISTANT).last)
    assert users(page) == ["Name a dog", "Name a bird"]
    expect(page.locator(ASSISTANT)).to_have_count(2)
    nav = versions_of(page, USER, 1)
    expect(nav.get_by_test_id("version-label")).to_have_text("2 / 2")
    expect(nav.get_by_test_id("version-next")).to_be_disabled()
    expect(versions_of(page, USER, 0)).to_have_count(0)  # the first message has one version

    nav.get_by_test_id("version-prev").click()
    expect(versions_of(page, USER, 1).get_by_test_id("version-label")).to_have_text("1 / 2")
    assert users(page) == ["Name a dog", "Name a cat"]
    expect(page.locator(ASSISTANT)).to_have_count(2)

    page.reload()
    wait_connected(page)
    assert users(page) == ["Name a dog", "Name a cat"]
    expect(versions_of(page, USER, 1).get_by_test_id("version-label")).to_have_text("1 / 2")
    versions_of(page, USER, 1).get_by_test_id("version-next").click()
    expect(versions_of(page, USER, 1).get_by_test_id("version-label")).to_have_text("2 / 2")
    assert users(page) == ["Name a dog", "Name a bird"]


def test_regenerate_keeps_each_reply_as_a_version_and_a_reload_keeps_the_one_shown(page: Page):
    new_chat(page, max_tokens=6)
    first = send(page, "Tell me something")
    wait_finished(first)
    first_id = first.get_attribute("data-message-id")
    first_text = body_text(first)
    page.get_by_test_id("regenerate").click()
    second = page.locator(ASSISTANT).last
    expect(second).not_to_have_attribute("data-message-id", first_id)
    wait_finished(second)
    second_id = second.get_attribute("data-message-id")
    nav = versions_of(page, ASSISTANT, 0)
    expect(nav.get_by_test_id("version-label")).to_have_text("2 / 2")

    nav.get_by_test_id("version-prev").click()
    expect(page.locator(ASSISTANT).first).to_have_attribute("data-message-id", first_id)
    assert body_text(page.locator(ASSISTANT).first) == first_text
    page.reload()
    wait_connected(page)
    expect(page.locator(ASSISTANT)).to_have_count(1)
    expect(page.locator(ASSISTANT).first).to_have_attribute("data-message-id", first_id)
    expect(versions_of(page, ASSISTANT, 0).get_by_test_id("version-label")).to_have_text("1 / 2")
    versions_of(page, ASSISTANT, 0).get_by_test_id("version-next").click()
    expect(page.locator(ASSISTANT).first).to_have_attribute("data-message-id", second_id)


def test_markup_in_an_edited_message_never_runs_in_any_version_or_after_a_reload(page: Page):
    new_chat(page, max_tokens=4)
    wait_finished(send(page, "Plain question"))
    edit(page, 0, XSS)
    wait_finished(page.locator(ASSISTANT).last)
    versions_of(page, USER, 0).get_by_test_id("version-prev").click()
    expect(versions_of(page, USER, 0).get_by_test_id("version-label")).to_have_text("1 / 2")
    versions_of(page, USER, 0).get_by_test_id("version-next").click()
    expect(versions_of(page, USER, 0).get_by_test_id("version-label")).to_have_text("2 / 2")
    page.reload()
    wait_connected(page)
    shown = page.locator(USER).first
    expect(shown.locator("strong")).to_have_text("bold")  # Markdown rendered, markup escaped
    assert shown.locator("img, script").count() == 0
    assert page.evaluate("window.__xss") is None
    # The edit box offers the text as typed, not as HTML.
    shown.get_by_test_id("edit-message").click()
    expect(shown.get_by_test_id("edit-input")).to_have_value(XSS)
    assert page.evaluate("window.__xss") is None


def test_an_edit_refused_for_length_keeps_its_box_and_text(page: Page):
    new_chat(page, max_tokens=4)
    wait_finished(send(page, "Short question"))
    long_text = "word " * 3000  # about 4,700 tokens against the tiny model's 512
    edit(page, 0, long_text, taken=False)
    expect(page.get_by_test_id("error-banner")).to_contain_text("accepts at most")
    box = page.locator(USER).first.get_by_test_id("edit-input")
    expect(box).to_have_value(long_text)
    assert users(page) == ["Short question"]


def test_an_edit_and_a_version_shown_in_one_tab_appear_in_the_other(browser, stack, page: Page):
    new_chat(page, max_tokens=4)
    wait_finished(send(page, "Question one"))
    url = page.url
    with logged_in_page(browser, stack) as other:
        other.goto(url)
        wait_connected(other)
        assert users(other) == ["Question one"]
        edit(page, 0, "Question two")
        expect(other.locator(USER).first.locator('[data-testid="message-body"]')).to_have_text("Question two")
        expect(other.locator(USER)).to_have_count(1)
        wait_finished(other.locator(ASSISTANT).last)
        wait_finished(page.locator(ASSISTANT).last)
        versions_of(page, USER, 0).get_by_test_id("version-prev").click()
        expect(other.locator(USER).first.locator('[data-testid="message-body"]')).to_have_text("Question one")
        expect(versions_of(other, USER, 0).get_by_test_id("version-label")).to_have_text("1 / 2")
