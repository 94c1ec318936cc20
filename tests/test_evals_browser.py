"""The Evaluations pages in a real browser (Debian's chromium through Playwright) against Django's
live test server: make an eval of pasted items on two models, watch its runs finish without a
reload, open a run and the compare page, vote. No Celery worker runs here: the test stores the
answers and grades them with `runs.execute` (what the run's task calls), as a worker would."""

from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import expect

from evals import runs
from evals.models import Eval, OutputItem, Preference
from inference.models import LanguageModel
from tests.browser_helpers import launch_chromium

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "evals-browser-password-1"
ITEMS = [
    {"question": "Capital of France?", "answer": "Paris"},
    {"question": "Two plus two?", "answer": "four"},
    {"question": "<img src=x onerror=window.__xss=1>", "answer": "blue"},
]


@pytest.fixture(scope="module")
def browser():
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are still
    # sync code run between page actions, never on the loop (as tests/test_dashboard_browser.py).
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with launch_chromium() as chromium:
            yield chromium
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server, django_user_model, tiny_model):
    """A logged-in page on the Evaluations list; collects console errors (a CSP refusal is one)."""
    LanguageModel.objects.create(name="Other", slug="other", source="local", location=tiny_model.location)
    django_user_model.objects.create_user("evals-alice", password=PASSWORD)
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.errors = []
    page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto("/accounts/login/?next=/evals/")
    page.get_by_test_id("login-username").fill("evals-alice")
    page.get_by_test_id("login-password").fill(PASSWORD)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(re.compile(r"/evals/$"))
    yield page
    context.close()


def answer_and_grade(run, answers: list[str]) -> None:
    for index, text in enumerate(answers):
        OutputItem.objects.filter(run=run, index=index).update(
            state=OutputItem.State.ANSWERED, output_text=text, finish_reason="stop"
        )
    assert runs.execute(run.pk, runs.executor_id("browser-test")) == "completed"


def test_make_an_eval_watch_its_runs_finish_open_a_run_compare_and_vote(page):
    page.get_by_test_id("eval-name").fill("capitals")
    expect(page.get_by_test_id("eval-items")).to_be_visible()
    expect(page.get_by_test_id("eval-file")).to_be_hidden()  # only the chosen source's panel shows
    page.get_by_test_id("eval-items").fill("\n".join(json.dumps(item) for item in ITEMS))
    expect(page.get_by_label("Exact match")).to_be_checked()
    expect(page.get_by_label("Answer mentioned")).to_be_checked()
    page.get_by_test_id("eval-model-a").select_option("tiny")
    page.get_by_test_id("eval-model-b").select_option("other")
    page.get_by_test_id("eval-create").click()

    expect(page.get_by_test_id("eval-name")).to_have_text("capitals")
    rows = page.get_by_test_id("run-row")
    expect(rows).to_have_count(2)
    expect(rows.first.get_by_test_id("run-status")).to_have_text("Queued")
    page.evaluate("window.__same_page = true")

    evaluation = Eval.objects.get()
    run_a, run_b = evaluation.runs.order_by("pk")
    answer_and_grade(run_a, ["Paris", "It is four", "green"])
    answer_and_grade(run_b, ["Paris", "4", "blue"])
    for row in (rows.nth(0), rows.nth(1)):  # polled: the page updates without a reload
        expect(row.get_by_test_id("run-status")).to_have_text("Completed")
        expect(row.get_by_test_id("run-progress")).to_have_text("3 answered, 3 graded of 3")
        expect(row.get_by_test_id("cancel-run")).to_be_hidden()
    expect(rows.nth(0).get_by_test_id("run-results")).to_have_text("2 of 3 passed (67%)")  # run B, newest first
    expect(rows.nth(1).get_by_test_id("run-results")).to_have_text("1 of 3 passed (33%)")
    assert page.evaluate("window.__same_page") is True

    rows.nth(1).get_by_test_id("run-link").click()
    items = page.get_by_test_id("item-row")
    expect(items).to_have_count(3)
    expect(items.nth(1).get_by_test_id("answer")).to_have_text("It is four")
    expect(items.nth(2)).to_contain_text("<img src=x onerror=window.__xss=1>")  # shown as text
    page.get_by_test_id("filter-pass").click()
    expect(items).to_have_count(1)

    page.get_by_test_id("eval-link").click()
    page.get_by_test_id("compare-link").click()
    expect(page).to_have_url(re.compile(rf"/evals/compare/{run_a.pk}/{run_b.pk}/$"))
    pairs = page.get_by_test_id("pair")
    expect(pairs).to_have_count(3)
    expect(pairs.nth(1).get_by_test_id("diff").locator("del")).to_have_text("It is four")
    expect(pairs.nth(1).get_by_test_id("diff").locator("ins")).to_have_text("4")
    expect(page.get_by_test_id("votes-a")).to_contain_text("0")
    pairs.nth(1).get_by_test_id("vote-a").click()
    expect(page.get_by_test_id("votes-a")).to_contain_text("1 (100%)")
    expect(page.get_by_test_id("pair").nth(1).get_by_test_id("vote-a")).to_have_attribute("aria-pressed", "true")
    assert Preference.objects.get().choice == "a"
    assert page.evaluate("window.__xss || 0") == 0
    assert page.errors == []
