"""What every browser test shares: Debian's chromium through Playwright, a logged-in page on a
live stack, and the steps of the chat page (log in, wait for the socket, send, find a message,
wait for a reply to end). Not a test file: the browser test files import from it.

A browser test file defines its own module-scoped `stack` fixture (the stacks differ: the
packaged default model, or the tiny test model and maybe some rows), usually with `live_stack`,
and takes the shared fixtures by binding them in its namespace:

    from . import browser_helpers
    from .browser_helpers import ASSISTANT, live_stack, send, wait_finished

    browser = browser_helpers.browser
    page = browser_helpers.page

    @pytest.fixture(scope="module")
    def stack(tmp_path_factory, tiny_model_dir):
        with live_stack(tmp_path_factory.mktemp("my-stack"), model_dir=tiny_model_dir) as live:
            yield live

Public names:
- Fixtures: `browser` (chromium, one per test module), `page` (a new logged-in page on the
  module's `stack`, closed after the test).
- Stacks and pages: `live_stack(tmp_dir, model_dir=None, **options)` starts daphne, Redis and
  a worker with the test user (USERNAME / PASSWORD) and, with `model_dir`, the tiny model as
  the default; `launch_chromium()`; `new_page(browser, stack, **context_options)` (not logged
  in); `logged_in_page(browser, stack, permissions=(), **context_options)`.
- Steps: `log_in(page, password=PASSWORD)`, `wait_connected(page)`, `new_chat(page,
  max_tokens)`, `send(page, text)` (returns the new assistant message), `message_by_id(page,
  message_id)`, `body_text(message)`, `wait_finished(message)`, `wait_for_text(message, chars)`,
  `conversation_id(page)`.
- Constants: CHROMIUM, CHROMIUM_ARGS, USERNAME, PASSWORD, REPLY_TIMEOUT_MS, the selectors
  ASSISTANT and USER (assistant and user messages), FINISHED (the statuses of an ended reply).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
USERNAME = "browser-alice"
PASSWORD = "browser-alice-password-1"
REPLY_TIMEOUT_MS = 120_000

ASSISTANT = '[data-testid="message"][data-role="assistant"]'
USER = '[data-testid="message"][data-role="user"]'
FINISHED = re.compile(r"^(complete|stopped|interrupted|error)$")


# --- the stack, the browser and its pages -----------------------------------------------------
@contextmanager
def live_stack(tmp_dir: Path, model_dir: Path | None = None, **options) -> Iterator:
    """A started LiveStack (tests/stack.py; `options` go to it) with the test user. With
    `model_dir`, its worker serves the tiny model there as the default, loaded before this yields."""
    from .live_client import use_model, wait_until_workers_loaded
    from .stack import LiveStack

    live = LiveStack(tmp_dir, **{"workers": 1, **options})
    live.start()
    try:
        if model_dir is not None:
            use_model(live, "tiny", str(model_dir))
            wait_until_workers_loaded(live)
        live.create_user(USERNAME, PASSWORD)
        yield live
    finally:
        live.stop()


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Debian's chromium (not a Playwright download), headless."""
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def new_page(browser: Browser, stack, **context_options) -> Page:
    """A page in a fresh context (no cookies) whose relative URLs go to the stack; not logged in."""
    context = browser.new_context(base_url=stack.url, **context_options)
    context.set_default_timeout(30_000)
    return context.new_page()


@contextmanager
def logged_in_page(browser: Browser, stack, permissions: Sequence[str] = (), **context_options) -> Iterator[Page]:
    """A new page logged in as USERNAME, its socket open; `permissions` are granted for the
    stack's origin (e.g. "clipboard-read"). Its context is closed afterwards."""
    page = new_page(browser, stack, **context_options)
    try:
        if permissions:
            page.context.grant_permissions(list(permissions), origin=stack.url)
        log_in(page)
        yield page
    finally:
        page.context.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser, stack) -> Iterator[Page]:
    with logged_in_page(browser, stack) as logged_in:
        yield logged_in


# --- steps on the chat page -------------------------------------------------------------------
def log_in(page: Page, password: str = PASSWORD) -> None:
    """Log in through the form; with the right password, wait until the chat socket is open."""
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.get_by_test_id("login-username").fill(USERNAME)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    if password == PASSWORD:
        expect(page.get_by_test_id("composer-input")).to_be_visible()
        wait_connected(page)


def wait_connected(page: Page) -> None:
    expect(page.get_by_test_id("connection-status")).to_have_attribute("data-state", "open")


def new_chat(page: Page, max_tokens: int) -> None:
    """Open a new chat whose replies stop after `max_tokens` (set in the settings panel)."""
    page.goto("/")
    wait_connected(page)
    page.get_by_test_id("settings-toggle").click()
    page.get_by_test_id("max-tokens").fill(str(max_tokens))
    page.get_by_test_id("settings-save").click()
    expect(page.get_by_test_id("settings-status")).to_contain_text("saved with the conversation")
    page.get_by_test_id("settings-toggle").click()
    expect(page.get_by_test_id("settings-panel")).to_be_hidden()


def send(page: Page, text: str) -> Locator:
    """Send `text` from the composer; returns the new assistant message (found by its id)."""
    before = page.locator(ASSISTANT).count()
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("send").click()
    fresh = page.locator(ASSISTANT).nth(before)
    expect(fresh).to_have_attribute("data-message-id", re.compile(r"^\d+$"))
    return message_by_id(page, fresh.get_attribute("data-message-id"))


def message_by_id(page: Page, message_id) -> Locator:
    return page.locator(f'[data-testid="message"][data-message-id="{message_id}"]')


def body_text(message: Locator) -> str:
    return message.get_by_test_id("message-body").inner_text().strip()


def wait_finished(message: Locator, timeout: int = REPLY_TIMEOUT_MS) -> None:
    """Wait until the reply has ended, however it ended (see FINISHED)."""
    expect(message).to_have_attribute("data-status", FINISHED, timeout=timeout)


def wait_for_text(message: Locator, chars: int) -> None:
    """Wait until the message shows at least `chars` characters (while it streams)."""
    pattern = re.compile(r"^[\s\S]{" + str(chars) + ",}$")
    expect(message.get_by_test_id("message-body")).to_have_text(pattern, timeout=REPLY_TIMEOUT_MS)


def conversation_id(page: Page) -> str:
    """The id of the conversation the page shows (from its /c/<id>/ address)."""
    match = re.search(r"/c/(\d+)/$", page.url)
    assert match, f"not on a conversation page: {page.url}"
    return match.group(1)
