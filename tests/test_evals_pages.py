"""The studio's Evaluations pages (evals/views.py) through Django's test client: the "New
evaluation" form makes the eval and its runs through the API's own checks (all or nothing, every
refusal shown on the form), and the eval, run and compare pages show what the runs graded. Runs
are executed for real with `runs.execute` (what the Celery task calls) after the test stores the
answers itself, so it only grades: no inference worker is needed."""

from __future__ import annotations

import csv
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from evals import runs
from evals.models import Eval, OutputItem, Preference, Run
from finetuning.probe import load_items
from inference.models import LanguageModel

pytestmark = pytest.mark.django_db

ITEMS = [
    {"question": "Capital of France?", "answer": "Paris"},
    {"question": "Two plus two?", "answer": "four"},
    {"question": "Color of the sky?", "answer": "blue"},
]
PASTED = "\n".join(json.dumps(item) for item in ITEMS) + "\n\n"


@pytest.fixture
def other_model(tiny_model_dir):
    return LanguageModel.objects.create(
        name="Other", slug="other", source=LanguageModel.Source.LOCAL, location=str(tiny_model_dir),
        max_new_tokens_cap=256, max_input_tokens=512,
    )  # fmt: skip


@pytest.fixture
def as_alice(client, alice, tiny_model):
    client.force_login(alice)
    return client


def form(**changes) -> dict:
    data = {
        "name": "capitals",
        "source": "paste",
        "items": PASTED,
        "limit": "50",
        "graders": ["exact_match", "mentioned"],
        "reference": "answer",
        "system_prompt": "Answer the question briefly.",
        "user_prompt": "{{item.question}}",
        "max_new_tokens": "64",
        "temperature": "0",
        "model_a": "tiny",
        "model_b": "",
    }
    data.update(changes)
    return data


def create(client, **changes) -> Eval:
    response = client.post("/evals/", form(**changes))
    assert response.status_code == 302, response.content.decode()[:3000]
    evaluation = Eval.objects.latest("pk")
    assert response["Location"] == f"/evals/{evaluation.pk}/"
    return evaluation


def answer(run: Run, answers: list[str]) -> str:
    """Store the answers as the inference worker would, then grade them as the run's task does."""
    for index, text in enumerate(answers):
        OutputItem.objects.filter(run=run, index=index).update(
            state=OutputItem.State.ANSWERED, output_text=text, finish_reason="stop"
        )
    return runs.execute(run.pk, runs.executor_id("test"))


def graded_pair(client) -> tuple[Eval, Run, Run]:
    """An eval of ITEMS run on two models, A and B, both graded."""
    evaluation = create(client, model_b="other")
    run_a, run_b = evaluation.runs.order_by("pk")
    assert answer(run_a, ["Paris", "It is four", "green"]) == "completed"
    assert answer(run_b, ["paris.", "4", "The sky is blue"]) == "completed"
    return evaluation, run_a, run_b


# --- making an eval --------------------------------------------------------------------------------
def test_pasted_jsonl_and_presets_make_the_eval_and_a_queued_run_with_its_items(as_alice, alice):
    evaluation = create(as_alice)
    assert evaluation.owner == alice and evaluation.name == "capitals"
    assert evaluation.item_schema == {
        "type": "object",
        "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"],
    }
    assert evaluation.testing_criteria == [
        {"type": "text_similarity", "name": "Exact match", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "evaluation_metric": "exact_match", "pass_threshold": 1.0},
        {"type": "string_check", "name": "Answer mentioned", "input": "{{sample.output_text}}",
         "reference": "{{item.answer}}", "operation": "ilike"},
    ]  # fmt: skip
    run = evaluation.runs.get()
    assert (run.status, run.model.slug, run.model_name, run.owner) == ("queued", "tiny", "tiny", alice)
    assert run.sampling["max_tokens"] == 64 and run.sampling["temperature"] == 0
    assert run.data_source["type"] == "completions" and run.data_source["source"]["content"] == []
    items = list(run.items.order_by("index"))
    assert [i.item for i in items] == ITEMS
    assert {i.state for i in items} == {OutputItem.State.WAITING}
    assert items[1].messages == [{"role": "system", "content": "Answer the question briefly."},
                                 {"role": "user", "content": "Two plus two?"}]  # fmt: skip
    page = as_alice.get(f"/evals/{evaluation.pk}/")
    assert page.status_code == 200 and b"Queued" in page.content and b"0 answered, 0 graded of 3" in page.content


def test_an_uploaded_file_gives_the_items_and_their_field_types(as_alice):
    rows = b'{"q": "Largest planet?", "a": "Jupiter", "points": 2}\n{"q": "Smallest?", "a": "Mercury", "points": 1.5}\n'
    upload = SimpleUploadedFile("items.jsonl", b"\xef\xbb\xbf" + rows, content_type="application/jsonl")
    evaluation = create(as_alice, source="upload", items="", file=upload, reference="a", user_prompt="{{item.q}}",
                        system_prompt="", graders=["rouge_l", "bleu", "f1"])  # fmt: skip
    assert evaluation.item_schema["properties"] == {"q": {"type": "string"}, "a": {"type": "string"},
                                                    "points": {"type": "number"}}  # fmt: skip
    assert [g["name"] for g in evaluation.testing_criteria] == ["ROUGE-L ≥ 0.5", "BLEU ≥ 0.3", "Token F1 ≥ 0.5"]
    assert [g["reference"] for g in evaluation.testing_criteria] == ["{{item.a}}"] * 3
    run = evaluation.runs.get()
    assert run.items.get(index=1).messages == [{"role": "user", "content": "Smallest?"}]


def test_the_probe_preset_makes_its_first_n_items(as_alice):
    evaluation = create(as_alice, source="probe", items="", limit="7")
    run = evaluation.runs.get()
    probe = load_items(limit=7)
    assert run.items.count() == 7 and run.data_source["source"] == {"type": "probe", "limit": 7}
    assert [i.item for i in run.items.order_by("index")] == [
        {"question": p.question, "answer": p.answers[0]} for p in probe
    ]


def test_two_models_make_two_runs_paired_for_the_compare_page(as_alice, other_model):
    evaluation = create(as_alice, model_b="other")
    first, second = evaluation.runs.order_by("pk")
    assert (first.model_name, second.model_name) == ("tiny", "other")
    assert first.metadata == {"compare_with": str(second.pk)} and second.metadata == {"compare_with": str(first.pk)}
    assert second.items.count() == 3
    page = as_alice.get(f"/evals/{evaluation.pk}/").content.decode()
    assert f'href="/evals/compare/{first.pk}/{second.pk}/"' in page


@pytest.mark.parametrize(
    "changes, field, says",
    [
        ({"items": '{"question": "a", "answer": "b"}\n{"question": "c", answer: "d"}'}, "items",
         "Line 2 is not valid JSON"),
        ({"items": '{"question": "a", "answer": "b"}\n\n["c", "d"]'}, "items", "Line 3 must be a JSON object"),
        ({"items": PASTED + '{"question": "Sun?"}'}, "items",
         "Line 5: the item lacks the required field(s) answer"),
        ({"items": PASTED + '{"question": "Sun?", "answer": 7}'}, "items", "Line 5: the item&#x27;s &#x27;answer&#x27; "
         "must be of type string"),
        ({"items": "  \n"}, "items", "Give at least one item"),
        ({"graders": []}, "graders", "Choose at least one grader."),
        ({"model_a": "nope"}, "model-a", "Pick one of the models you may use"),
        ({"model_b": "tiny"}, "model-b", "Pick another model"),
        ({"reference": "expected"}, "reference", "The items have no field &#x27;expected&#x27;"),
        ({"user_prompt": "{{item.questoin}}"}, "user", "the item schema has no field &#x27;questoin&#x27;"),
        ({"user_prompt": "{{sample.output_text}}"}, "user", "can only be used in graders"),
        ({"max_new_tokens": "0"}, "max-tokens", "greater than or equal to 1"),
        ({"temperature": "9"}, "temperature", "less than or equal to 2"),
        ({"name": ""}, "name", "Name the evaluation."),
        ({"source": "upload", "items": ""}, "file", "Choose a .jsonl file"),
        ({"source": "probe", "items": "", "limit": "301"}, "limit", "It has 300 items"),
    ],
)  # fmt: skip
def test_a_bad_input_is_shown_on_the_form_and_nothing_is_saved(as_alice, changes, field, says):
    response = as_alice.post("/evals/", form(**changes))
    assert response.status_code == 400
    page = response.content.decode()
    assert f'data-testid="error-{field}">' in page and says in page, page[page.find("field-error") - 200 :][:1500]
    assert not Eval.objects.exists() and not Run.objects.exists() and not OutputItem.objects.exists()


def test_a_refusal_after_the_eval_was_made_keeps_nothing_either(as_alice, tiny_model):
    """The sampling check runs when the run is made, after the eval: the transaction drops both."""
    LanguageModel.objects.filter(pk=tiny_model.pk).update(max_new_tokens_cap=32)
    response = as_alice.post("/evals/", form(max_new_tokens="100"))
    assert response.status_code == 400 and b'data-testid="error-max-tokens"' in response.content
    assert not Eval.objects.exists() and not Run.objects.exists()


def test_the_limits_on_items_and_active_runs_are_clear_form_errors(as_alice, settings, other_model):
    settings.EVALS_MAX_ITEMS = 2
    response = as_alice.post("/evals/", form())
    assert response.status_code == 400 and b"There are 3 items; a run takes at most 2." in response.content
    settings.EVALS_MAX_ITEMS = 1000
    settings.EVALS_MAX_ACTIVE_RUNS = 2
    create(as_alice)
    response = as_alice.post("/evals/", form(model_b="other"))
    assert response.status_code == 400 and b'data-testid="form-errors"' in response.content
    assert b"You have 1 evaluation run(s) queued or running, and may have 2 at once" in response.content
    assert Eval.objects.count() == 1 and Run.objects.count() == 1


# --- the pages of an eval and its runs ---------------------------------------------------------------
def test_the_list_shows_each_eval_with_its_runs_and_last_pass_rate(as_alice):
    evaluation = create(as_alice, name="<b>facts</b>")
    answer(evaluation.runs.get(), ["Paris", "five", "blue"])
    page = as_alice.get("/evals/").content.decode()
    assert "&lt;b&gt;facts&lt;/b&gt;" in page and "<b>facts</b>" not in page
    assert "Exact match, Answer mentioned" in page and "67%" in page and "(2 / 3)" in page
    assert 'data-testid="evals-link"' in page


def test_the_eval_page_shows_graders_runs_and_results_per_criterion(as_alice):
    evaluation = create(as_alice)
    run = evaluation.runs.get()
    # Paris: both pass. "It is four": mentioned only. "green": both fail.
    assert answer(run, ["Paris", "It is four", "green"]) == "completed"
    page = as_alice.get(f"/evals/{evaluation.pk}/").content.decode()
    assert "exact_match ≥ 1.0" in page and "string_check <code>ilike</code>" in page
    assert "Completed" in page and "3 answered, 3 graded of 3" in page
    assert "1 of 3 passed (33%)" in page
    assert "1 passed, 2 failed (33%)" in page and "2 passed, 1 failed (67%)" in page
    assert 'value="0.6667"' in page  # the chart's bar for "Answer mentioned"
    assert 'data-testid="cancel-run"' not in page and "data-status-url" not in page  # finished: nothing to poll


def test_the_status_endpoint_says_how_far_a_run_is(as_alice):
    evaluation = create(as_alice)
    run = evaluation.runs.get()
    url = f"/evals/runs/{run.pk}/status.json"
    status = as_alice.get(url).json()
    assert (status["status"], status["finished"], status["progress"]) == (
        "queued",
        False,
        {"items": 3, "answered": 0, "graded": 0},
    )
    assert 'data-status-url="' + url in as_alice.get(f"/evals/{evaluation.pk}/").content.decode()
    answer(run, ["Paris", "four", "blue"])
    status = as_alice.get(url).json()
    assert status["status"] == "completed" and status["finished"] and status["progress"]["graded"] == 3
    assert status["result_counts"] == {"total": 3, "passed": 3, "failed": 0, "errored": 0}
    assert status["pass_rate"] == 1.0 and status["pass_rate_text"] == "100%"
    assert status["criteria"][0] == {"name": "Exact match", "passed": 3, "failed": 0, "pass_rate": 1.0,
                                     "pass_rate_text": "100%"}  # fmt: skip


def test_the_run_page_lists_each_item_escaped_and_filters_by_status(as_alice):
    evaluation = create(as_alice)
    run = evaluation.runs.get()
    answer(run, ["Paris", "<script>alert(1)</script> four", "green"])
    page = as_alice.get(f"/evals/runs/{run.pk}/").content.decode()
    assert page.count('data-testid="item-row"') == 3
    assert "&lt;script&gt;alert(1)&lt;/script&gt; four" in page and "<script>alert(1)" not in page
    assert "Capital of France?" in page and "1.000" in page and "0.000" in page
    assert f'href="/evals/runs/{run.pk}/export.csv"' in page
    failed = as_alice.get(f"/evals/runs/{run.pk}/?status=fail").content.decode()
    assert failed.count('data-testid="item-row"') == 2 and "Capital of France?" not in failed
    assert "fail (2)" in failed and "pass (1)" in failed
    assert as_alice.get(f"/evals/runs/{run.pk}/?status=error").content.decode().count('data-testid="item-row"') == 0


def test_exports_give_items_answers_and_scores_with_formulas_defused(as_alice):
    evaluation = create(as_alice, items='{"question": "=HYPERLINK(\\"x\\")", "answer": "-5"}\n'
                        '{"question": "Plain?", "answer": "yes"}')  # fmt: skip
    run = evaluation.runs.get()
    answer(run, ["@SUM(A1)", "yes"])
    response = as_alice.get(f"/evals/runs/{run.pk}/export.csv")
    assert response["Content-Type"].startswith("text/csv")
    assert f'filename="eval-{evaluation.pk}-run-{run.pk}.csv"' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["index", "status", "item.question", "item.answer", "output_text", "finish_reason", "error",
                       "Exact match score", "Exact match passed", "Answer mentioned score",
                       "Answer mentioned passed"]  # fmt: skip
    assert rows[1][:5] == ["0", "fail", '\'=HYPERLINK("x")', "'-5", "'@SUM(A1)"]
    assert rows[2] == ["1", "pass", "Plain?", "yes", "yes", "stop", "", "1.0", "True", "1.0", "True"]

    response = as_alice.get(f"/evals/runs/{run.pk}/export.jsonl")
    records = [json.loads(line) for line in response.content.decode().splitlines()]
    assert records[0]["item"] == {"question": '=HYPERLINK("x")', "answer": "-5"}  # JSON keeps the data as it is
    assert records[0]["output_text"] == "@SUM(A1)" and records[0]["status"] == "fail"
    assert [r["name"] for r in records[1]["results"]] == ["Exact match", "Answer mentioned"]
    assert records[1]["results"][0]["score"] == 1.0 and records[1]["results"][0]["passed"] is True


def test_cancel_ends_a_queued_run_and_says_so(as_alice):
    evaluation = create(as_alice)
    run = evaluation.runs.get()
    page = as_alice.get(f"/evals/runs/{run.pk}/").content.decode()
    assert 'data-testid="cancel-run"' in page and "data-reload-when-finished" in page
    response = as_alice.post(f"/evals/runs/{run.pk}/cancel/")
    assert response.status_code == 302 and response["Location"] == f"/evals/{evaluation.pk}/"
    run.refresh_from_db()
    assert run.status == "canceled" and set(run.items.values_list("state", flat=True)) == {"skipped"}
    assert as_alice.get(f"/evals/runs/{run.pk}/status.json").json()["status"] == "canceled"
    again = as_alice.post(f"/evals/runs/{run.pk}/cancel/", {"back": "run"}, follow=True)
    assert again.redirect_chain[-1][0] == f"/evals/runs/{run.pk}/" and b"had already ended" in again.content


def test_run_again_answers_the_same_items_with_the_same_prompt_on_another_model(as_alice, other_model):
    evaluation = create(as_alice, system_prompt="Be terse.")
    response = as_alice.post(f"/evals/{evaluation.pk}/runs/new/", {"model": "other"})
    assert response.status_code == 302
    first, again = evaluation.runs.order_by("pk")
    assert again.model_name == "other" and again.sampling["max_tokens"] == 64
    assert [i.item for i in again.items.order_by("index")] == ITEMS
    assert again.items.get(index=0).messages[0] == {"role": "system", "content": "Be terse."}
    refused = as_alice.post(f"/evals/{evaluation.pk}/runs/new/", {"model": "nope"}, follow=True)
    assert b"Pick one of the models you may use" in refused.content and evaluation.runs.count() == 2


def test_delete_removes_the_eval_and_its_runs(as_alice):
    evaluation = create(as_alice)
    response = as_alice.post(f"/evals/{evaluation.pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/evals/"
    assert not Eval.objects.exists() and not Run.objects.exists() and not OutputItem.objects.exists()
    assert as_alice.get(f"/evals/{evaluation.pk}/").status_code == 404


# --- two runs side by side ---------------------------------------------------------------------------
def test_the_compare_page_shows_a_word_diff_and_the_win_rate_per_grader(as_alice, other_model):
    evaluation, run_a, run_b = graded_pair(as_alice)
    OutputItem.objects.filter(run=run_b, index=1).update(output_text="<b>4</b>")  # shown, never run as HTML
    page = as_alice.get(f"/evals/compare/{run_a.pk}/{run_b.pk}/").content.decode()
    assert page.count('data-testid="pair"') == 3
    assert "<del>green</del><ins>The sky is blue</ins>" in page
    assert "<del>It is four</del><ins>&lt;b&gt;4&lt;/b&gt;</ins>" in page and "<b>4</b>" not in page
    # Exact match: Paris = paris. (tie), "It is four" 0 vs "4" 0 (tie), green 0 vs "The sky is blue" 0 (tie).
    # Answer mentioned: tie (both 1), A wins (1 vs 0), B wins (0 vs 1).
    exact = page[page.index('data-metric="Exact match"') :].split("</tr>")[0]
    assert '<td data-testid="a">0 ' in exact and '<td data-testid="tie">3 <span class="muted small">(100%)' in exact
    mentioned = page[page.index('data-metric="Answer mentioned"') :].split("</tr>")[0]
    assert '<td data-testid="a">1 <span class="muted small">(33%)' in mentioned
    assert '<td data-testid="b">1 <span class="muted small">(33%)' in mentioned
    assert '<td data-testid="tie">1 ' in mentioned
    swapped = as_alice.get(f"/evals/compare/{run_b.pk}/{run_a.pk}/").content.decode()
    assert "<del>The sky is blue</del><ins>green</ins>" in swapped


def test_a_vote_is_stored_changeable_and_counted_beside_the_metrics(as_alice, alice, other_model):
    _, run_a, run_b = graded_pair(as_alice)
    url = f"/evals/compare/{run_a.pk}/{run_b.pk}/"
    response = as_alice.post(url + "vote/", {"index": "2", "choice": "b"})
    assert response.status_code == 302 and response["Location"] == url + "#item-2"
    as_alice.post(url + "vote/", {"index": "0", "choice": "a"})
    as_alice.post(url + "vote/", {"index": "0", "choice": "tie"})  # changed
    assert sorted(Preference.objects.values_list("index", "choice", "user")) == [(0, "tie", alice.pk),
                                                                                 (2, "b", alice.pk)]  # fmt: skip
    page = as_alice.get(url).content.decode()
    assert '<td data-testid="votes-b">1 <span class="muted small">(50%)' in page
    assert '<td data-testid="votes-tie">1 ' in page and '<td data-testid="votes-a">0 ' in page
    assert page.count('aria-pressed="true"') == 2
    # The other way round, the same votes: B's win is now A's.
    swapped = as_alice.get(f"/evals/compare/{run_b.pk}/{run_a.pk}/").content.decode()
    assert '<td data-testid="votes-a">1 <span class="muted small">(50%)' in swapped
    as_alice.post(f"/evals/compare/{run_b.pk}/{run_a.pk}/vote/", {"index": "2", "choice": "tie"})
    assert Preference.objects.get(index=2).choice == "tie" and Preference.objects.count() == 2
    bad = as_alice.post(url + "vote/", {"index": "9", "choice": "a"}, follow=True)
    assert b"Both runs need an item 9." in bad.content
    bad = as_alice.post(url + "vote/", {"index": "1", "choice": "both"}, follow=True)
    assert b"Choose A, B or tie." in bad.content and Preference.objects.count() == 2


def test_the_compare_pick_and_compare_page_take_only_two_runs_of_the_same_eval(as_alice, other_model):
    evaluation, run_a, run_b = graded_pair(as_alice)
    pick = as_alice.get(f"/evals/{evaluation.pk}/compare/?a={run_b.pk}&b={run_a.pk}")
    assert pick["Location"] == f"/evals/compare/{run_b.pk}/{run_a.pk}/"
    other = create(as_alice, name="other").runs.get()
    assert as_alice.get(f"/evals/compare/{run_a.pk}/{other.pk}/").status_code == 404
    assert as_alice.get(f"/evals/compare/{run_a.pk}/{run_a.pk}/").status_code == 404
    assert as_alice.get(f"/evals/{evaluation.pk}/compare/?a={run_a.pk}&b={other.pk}").status_code == 404


# --- who may see what --------------------------------------------------------------------------------
def test_another_users_pages_and_posts_answer_404(as_alice, bob, other_model):
    evaluation, run_a, run_b = graded_pair(as_alice)
    pages = [
        f"/evals/{evaluation.pk}/",
        f"/evals/runs/{run_a.pk}/",
        f"/evals/runs/{run_a.pk}/status.json",
        f"/evals/runs/{run_a.pk}/export.csv",
        f"/evals/runs/{run_a.pk}/export.jsonl",
        f"/evals/compare/{run_a.pk}/{run_b.pk}/",
        f"/evals/{evaluation.pk}/compare/?a={run_a.pk}&b={run_b.pk}",
    ]
    posts = [(f"/evals/{evaluation.pk}/delete/", {}), (f"/evals/{evaluation.pk}/runs/new/", {"model": "tiny"}),
             (f"/evals/runs/{run_a.pk}/cancel/", {}),
             (f"/evals/compare/{run_a.pk}/{run_b.pk}/vote/", {"index": "0", "choice": "a"})]  # fmt: skip
    as_alice.logout()
    for url in pages:
        assert as_alice.get(url)["Location"].startswith("/accounts/login/"), url
    as_alice.force_login(bob)
    for url in pages:
        assert as_alice.get(url).status_code == 404, url
    for url, data in posts:
        assert as_alice.post(url, data).status_code == 404, url
    assert b'data-testid="eval-row"' not in as_alice.get("/evals/").content
    assert Eval.objects.count() == 1 and Run.objects.count() == 2 and not Preference.objects.exists()
