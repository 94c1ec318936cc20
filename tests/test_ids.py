"""Numbers a client sends (ids, limits, list indexes, periods) are read as ASCII digits only
(chatsite/ids.py): "²" passes `str.isdigit()`, and a 30-digit id overflows the database's integer;
each used to be a 500. Every parser answers a clear 4xx instead (issue 24, finding 10)."""

from __future__ import annotations

import pytest

from chatsite.ids import parse_id, parse_signed
from tests.test_api_files import bearer, error_of

pytestmark = pytest.mark.django_db

HUGE = "9" * 30


@pytest.mark.parametrize("text", ["²", "١٢", "1_000", " 12", "12\n", "-1", "", HUGE, "1e3"])
def test_only_ascii_digits_of_reasonable_length_are_ids(text):
    assert parse_id(text) is None


def test_ids_and_signed_numbers_read_what_they_should():
    assert parse_id("0012") == 12 and parse_id(7) == 7 and parse_id(True) is None and parse_id(10**18) is None
    assert parse_signed(" -3 ") == -3 and parse_signed("²") is None


def test_the_api_refuses_odd_ids_and_limits_with_400_or_404(client, alice, settings, tiny_model):
    settings.API_RATE_LIMIT = 0
    auth = bearer(alice)
    for path in ("/v1/files/file-²", f"/v1/files/file-{HUGE}", "/v1/fine_tuning/jobs/ftjob-²"):
        response = client.get(path, **auth)
        assert response.status_code in (403, 404), (path, response.status_code)
    for query in ("limit=²", "limit=١٢", f"after=file-{HUGE}"):
        response = client.get(f"/v1/files?{query}", **auth)
        assert response.status_code == 400 and error_of(response)["param"] in ("limit", "after")


def test_an_eval_template_index_must_be_ascii_digits(client, alice, settings, tiny_model):
    settings.API_RATE_LIMIT = 0
    schema = {"type": "object", "properties": {"choices": {"type": "array"}}, "required": ["choices"]}
    body = {"name": "x", "data_source_config": {"type": "custom", "item_schema": schema},
            "testing_criteria": [{"type": "string_check", "name": "c", "input": "{{sample.output_text}}",
                                  "reference": "{{item.choices.²}}", "operation": "eq"}]}  # fmt: skip
    made = client.post("/v1/evals", body, content_type="application/json", **bearer(alice)).json()
    run = {"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": [
        {"item": {"choices": ["a"]}, "sample": {"output_text": "a"}}]}}}  # fmt: skip
    response = client.post(f"/v1/evals/{made['id']}/runs", run, content_type="application/json", **bearer(alice))
    assert response.status_code == 200  # accepted: the placeholder's index is checked per item when graded
    from evals import runs

    assert runs.execute(int(response.json()["id"].removeprefix("evalrun_")), "test") == "completed"
    item = client.get(f"/v1/evals/{made['id']}/runs/{response.json()['id']}/output_items", **bearer(alice)).json()
    assert "must be a 0-based index" in item["data"][0]["results"][0]["error"]


def test_pages_answer_404_or_a_default_for_odd_numbers(client, alice, admin_client, tiny_model):
    client.force_login(alice)
    assert client.get(f"/c/{HUGE}/").status_code == 404
    assert client.post(f"/api/conversations/{HUGE}/", {"title": "x"}).status_code == 404
    assert client.get("/evals/1/compare/?a=²&b=" + HUGE).status_code == 404
    assert admin_client.get("/admin/dashboard/?days=²").status_code == 200  # the default period


def test_a_conversation_setting_in_odd_digits_is_a_field_error(client, alice, tiny_model):
    from chat.models import Conversation

    conversation = Conversation.objects.create(user=alice, model=tiny_model)
    client.force_login(alice)
    response = client.post(f"/api/conversations/{conversation.pk}/", {"max_tokens": "²"})
    assert response.status_code == 400 and "max_tokens" in response.json()["errors"]
