"""The usage dashboard in a real browser (Debian's chromium through Playwright) against Django's
live test server: the charts are drawn with uPlot from the JSON endpoint, with data and without,
and the page logs no console error."""

from __future__ import annotations

import os
from datetime import datetime, time, timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect, sync_playwright

from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "dash-staff-password-1"
LINE_CHARTS = ("messages", "tokens", "ttft", "tps", "moderation")


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls (making
    # data, the database flush) are still sync code run between page actions, never on the loop.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def _counts(message) -> bool:
    """A console error, other than the browser's own asking for /favicon.ico (the admin has none)."""
    return message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico")


@pytest.fixture
def admin_page(browser, live_server, django_user_model, settings):
    """A logged-in staff member's page; collects console errors and uncaught exceptions."""
    settings.DASHBOARD_SETTLE_S = 0  # count the rows made just now
    django_user_model.objects.create_user("dash-staff", password=PASSWORD, is_staff=True)
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg) if _counts(msg) else None)
    page.on("pageerror", lambda exc: page.errors.append(exc))
    page.goto("/admin/login/")
    page.fill("#id_username", "dash-staff")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    expect(page.get_by_test_id("dashboard-link")).to_be_visible()
    yield page
    context.close()


def usage(django_user_model) -> None:
    """A week of chats with two models, feedback, moderation events and fine-tuning jobs."""
    from chat.models import Conversation, Feedback, Message
    from finetuning.models import Dataset, Job
    from inference.models import LanguageModel
    from moderation.models import Event

    owner = django_user_model.objects.create_user("dash-user", password=PASSWORD)
    conversation = Conversation.objects.create(user=owner)
    models = [
        LanguageModel.objects.create(name=name, slug=name.lower(), source="local", location=f"/m/{name}")
        for name in ("Alpha", "Beta")
    ]
    for offset in range(6):
        when = timezone.make_aware(datetime.combine(timezone.localdate() - timedelta(days=offset), time(10)))
        for i in range(3 + offset):
            made = Message.objects.create(conversation=conversation, role="user", content="q")
            reply = Message.objects.create(
                conversation=conversation, role="assistant", content="a", model=models[i % 2],
                prompt_tokens=20 + i, completion_tokens=40 + offset, ttft_ms=150.0 * (i + 1), tokens_per_s=12.0 + i,
            )  # fmt: skip
            Message.objects.filter(pk__in=[made.pk, reply.pk]).update(created_at=when)
            if i == 0:
                Feedback.objects.create(message=reply, user=owner, rating=1 if offset % 2 else -1)
        event = Event.objects.create(stage="input", action="flag" if offset % 2 else "block", rule_name="r")
        Event.objects.filter(pk=event.pk).update(created_at=when)
    dataset = Dataset.objects.create(
        owner=owner, name="d", original_filename="d.jsonl", format="messages", file_name="d.jsonl", sha256="0" * 64,
        rows=4,
    )  # fmt: skip
    for state in ("succeeded", "failed", "running"):
        Job.objects.create(owner=owner, name="j", base_model=models[0], dataset=dataset, state=state)


def open_dashboard(page: Page) -> None:
    page.get_by_test_id("dashboard-link").click()
    expect(page.get_by_test_id("status")).to_contain_text("Counted through")


def test_with_no_messages_the_page_says_so_and_draws_no_empty_chart(admin_page):
    open_dashboard(admin_page)
    expect(admin_page.get_by_test_id("empty")).to_be_visible()
    expect(admin_page.get_by_test_id("empty")).to_contain_text("No messages yet")
    assert admin_page.locator("canvas").count() == 0
    assert admin_page.errors == []


def test_with_data_every_chart_is_drawn_and_the_tables_hold_the_numbers(admin_page, django_user_model):
    usage(django_user_model)
    open_dashboard(admin_page)
    expect(admin_page.get_by_test_id("empty")).to_be_hidden()
    for name in (*LINE_CHARTS, "feedback", "jobs"):
        expect(admin_page.locator(f'[data-testid="chart-{name}"] canvas')).to_have_count(1)
        assert admin_page.locator(f'[data-testid="chart-{name}"] canvas').bounding_box()["height"] > 100
    models = admin_page.get_by_test_id("models-table")
    expect(models.locator("tbody tr")).to_have_count(2)
    expect(models).to_contain_text("Alpha")
    expect(admin_page.get_by_test_id("days-table").locator("tbody tr")).to_have_count(30)
    expect(admin_page.get_by_test_id("jobs-table")).to_contain_text("Succeeded")
    expect(admin_page.get_by_test_id("chart-messages")).to_contain_text("replies · Beta")

    admin_page.get_by_test_id("period-7").click()
    expect(admin_page.get_by_test_id("period-7")).to_have_attribute("aria-current", "page")
    expect(admin_page.get_by_test_id("days-table").locator("tbody tr")).to_have_count(7)
    expect(admin_page.locator('[data-testid="chart-ttft"] canvas')).to_have_count(1)
    today = admin_page.get_by_test_id("days-table").locator("tbody tr").last
    expect(today.locator("td").nth(1)).to_have_text("6")  # 3 questions and 3 replies today
    assert admin_page.errors == []
