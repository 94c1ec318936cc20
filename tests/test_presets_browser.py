"""Feedback buttons, presets and prompt templates in the chat page, in a real browser (Debian's
chromium through Playwright) against the real stack: daphne, Redis and an inference worker
serving the tiny test model (its replies are nonsense, which does not matter here)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from . import browser_helpers
from .browser_helpers import ASSISTANT, USER, live_stack, new_chat, wait_connected, wait_finished

pytestmark = [pytest.mark.browser, pytest.mark.stack]

PRESET = (
    "from presets.models import Preset\n"
    "Preset.objects.create(name='Precise', system_prompt='Answer in one short sentence.', temperature=0.2, "
    "top_k=10, max_tokens=12)\n"
)

# chromium and a logged-in page (tests/browser_helpers.py)
browser = browser_helpers.browser
page = browser_helpers.page


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    """The real stack serving the tiny model, with the preset "Precise"."""
    stack_dir = tmp_path_factory.mktemp("presets-stack")
    with live_stack(stack_dir, model_dir=tiny_model_dir, extra_env={"CHAT_RATE_LIMIT": "0"}) as live:
        live.run_manage("shell", "-c", PRESET)
        yield live


def test_choosing_a_preset_fills_the_system_prompt_and_the_settings(page):
    page.get_by_test_id("settings-toggle").click()
    page.get_by_test_id("temperature").fill("1.5")
    page.get_by_test_id("preset-select").select_option(label="Precise")
    expect(page.get_by_test_id("system-prompt")).to_have_value("Answer in one short sentence.")
    expect(page.get_by_test_id("temperature")).to_have_value("0.2")
    expect(page.get_by_test_id("top-k")).to_have_value("10")
    expect(page.get_by_test_id("max-tokens")).to_have_value("12")
    expect(page.get_by_test_id("top-p")).to_have_value("")  # not in the preset: the model's default
    expect(page.get_by_test_id("settings-status")).to_contain_text("Precise")


def test_a_template_form_sends_the_prompt_filled_on_the_server_and_keeps_values_as_text(page):
    new_chat(page, max_tokens=4)
    page.evaluate("window.__xss = 0")
    page.get_by_test_id("template-select").select_option(label="Translate")
    expect(page.get_by_test_id("template-form")).to_be_visible()
    expect(page.get_by_test_id("composer-input")).to_be_hidden()
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("error-text")).to_contain_text("language")  # empty variable, nothing sent
    assert page.locator(USER).count() == 0

    hostile = '<img src=x onerror="window.__xss=1"> {{language}} }}'
    page.get_by_test_id("template-var-language").fill("French")
    page.get_by_test_id("template-var-text").fill(hostile)
    page.get_by_test_id("send").click()
    user = page.locator(USER).first
    expect(user.get_by_test_id("message-body")).to_contain_text("Translate the following text into French")
    expect(user.get_by_test_id("message-body")).to_contain_text(hostile)
    expect(user).to_contain_text("template translate v1")
    expect(page.get_by_test_id("template-var-text")).to_have_value("")
    wait_finished(page.locator(ASSISTANT).first)

    page.reload()
    wait_connected(page)
    user = page.locator(USER).first
    expect(user.get_by_test_id("message-body")).to_contain_text("into French")
    expect(user.get_by_test_id("message-body")).to_contain_text("{{language}} }}")
    expect(user).to_contain_text("template translate v1")
    assert user.locator("img").count() == 0
    assert page.evaluate("window.__xss || 0") == 0


def test_feedback_on_a_reply_is_saved_and_shown_again_after_a_reload(page):
    new_chat(page, max_tokens=4)
    page.get_by_test_id("composer-input").fill("Say something")
    page.get_by_test_id("send").click()
    reply = page.locator(ASSISTANT).first
    wait_finished(reply)
    up = reply.get_by_test_id("feedback-up")
    down = reply.get_by_test_id("feedback-down")
    expect(up).to_contain_text("Good")  # an icon and a word, not an emoji (issue 25, item 9)
    assert up.locator(".icon-thumb-up").bounding_box()["width"] > 0
    down.click()
    expect(down).to_have_attribute("aria-pressed", "true")
    pressed = down.evaluate("b => getComputedStyle(b).backgroundColor")
    assert pressed != up.evaluate("b => getComputedStyle(b).backgroundColor")  # a clear pressed state
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")
    reply.get_by_test_id("feedback-more").click()
    reply.get_by_test_id("feedback-comment").fill("Nonsense, but fast.")
    reply.get_by_test_id("feedback-edited").fill("The answer I wanted.")
    reply.get_by_test_id("feedback-save").click()
    expect(reply.get_by_test_id("feedback-status")).to_have_text("Thanks, saved.")
    expect(reply.get_by_test_id("feedback-form")).to_be_hidden()

    page.reload()
    wait_connected(page)
    reply = page.locator(ASSISTANT).first
    expect(reply.get_by_test_id("feedback-up")).to_have_attribute("aria-pressed", "true")
    expect(reply.get_by_test_id("feedback-down")).to_have_attribute("aria-pressed", "false")
    expect(reply.get_by_test_id("feedback-more")).to_have_text(re.compile("✓"))
    reply.get_by_test_id("feedback-more").click()
    expect(reply.get_by_test_id("feedback-comment")).to_have_value("Nonsense, but fast.")
    expect(reply.get_by_test_id("feedback-edited")).to_have_value("The answer I wanted.")
