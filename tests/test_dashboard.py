"""The admin's usage dashboard: the rollup's sums and percentiles on a small known dataset, the
live counts (moderation, feedback, fine-tuning jobs), and who may see it."""

from __future__ import annotations

import math
import random
from datetime import datetime, time, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from chat.models import Conversation, Feedback, Message
from dashboard import histograms, report, rollup
from dashboard.models import DailyUsage
from finetuning.models import Dataset, Job
from inference.models import LanguageModel
from moderation.models import Event

pytestmark = pytest.mark.django_db

BUCKET_RATIO = 10 ** (1 / histograms.BUCKETS_PER_DECADE)


@pytest.fixture(autouse=True)
def _count_at_once(settings):
    """Rows here are dated by hand, some later today: count them without the settling wait."""
    settings.DASHBOARD_SETTLE_S = 0


def at(day_offset: int, hour: int = 12):
    """A moment `day_offset` days before today (UTC), at `hour`."""
    day = timezone.localdate() - timedelta(days=day_offset)
    return timezone.make_aware(datetime.combine(day, time(hour)))


def language_model(slug: str) -> LanguageModel:
    return LanguageModel.objects.create(
        name=slug.title(), slug=slug, source=LanguageModel.Source.LOCAL, location=f"/models/{slug}"
    )


@pytest.fixture
def conversation(alice):
    return Conversation.objects.create(user=alice)


@pytest.fixture
def models_ab():
    return language_model("alpha"), language_model("beta")


def message(conversation, when, *, model=None, role=Message.Role.ASSISTANT, **fields) -> Message:
    if role == Message.Role.USER:
        fields.setdefault("status", Message.Status.COMPLETE)
    made = Message.objects.create(conversation=conversation, role=role, model=model, content="x", **fields)
    Message.objects.filter(pk=made.pk).update(created_at=when)
    return made


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("carol", password="carol-pass-123", is_staff=True)


# --- the rollup ----------------------------------------------------------------------------------
def test_counts_and_token_sums_add_up_per_day_per_model(conversation, models_ab):
    alpha, beta = models_ab
    for _ in range(2):
        message(conversation, at(2, 9), role=Message.Role.USER)
    for completion in (5, 6, 7):
        message(conversation, at(2, 9), model=alpha, prompt_tokens=10, completion_tokens=completion, ttft_ms=100)
    message(conversation, at(2, 23), model=beta, prompt_tokens=3, completion_tokens=4, ttft_ms=50)
    message(conversation, at(0, 1), model=alpha, prompt_tokens=8, completion_tokens=0, status=Message.Status.ERROR)

    rollup.refresh()
    data = report.build(7)

    assert data["empty"] is False
    two_days_ago, today = 4, 6
    assert data["user_messages"][two_days_ago] == 2
    assert data["messages"][two_days_ago] == 6 and data["messages"][today] == 1
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name["Alpha"]["replies"][two_days_ago] == 3
    assert by_name["Alpha"]["replies"][today] == 1
    assert by_name["Alpha"]["tokens"][two_days_ago] == 3 * 10 + 5 + 6 + 7
    assert by_name["Alpha"]["totals"] == {
        "replies": 4,
        "failed_replies": 1,
        "prompt_tokens": 38,
        "completion_tokens": 18,
    }
    assert by_name["Beta"]["tokens"][two_days_ago] == 7
    assert sum(by_name["Beta"]["replies"]) == 1
    assert [m["name"] for m in data["models"]] == ["Alpha", "Beta"]  # most replies first


def test_percentiles_are_within_one_bucket_of_the_exact_values(conversation, models_ab):
    alpha, _ = models_ab
    rng = random.Random(12)
    ttfts = [rng.lognormvariate(math.log(300), 0.8) for _ in range(400)]
    speeds = [rng.uniform(2, 90) for _ in range(400)]
    for ttft, speed in zip(ttfts, speeds, strict=True):
        message(conversation, at(rng.randrange(5)), model=alpha, ttft_ms=ttft, tokens_per_s=speed)

    rollup.refresh()
    model = report.build(7)["models"][0]

    for q in report.QUANTILES:
        for values, got in ((ttfts, model["ttft_ms"][f"p{q}"]), (speeds, model["tokens_per_s"][f"p{q}"])):
            exact = exact_percentile(values, q)
            assert exact / BUCKET_RATIO <= got <= exact * BUCKET_RATIO, (q, exact, got)


def test_the_database_buckets_values_as_python_does(conversation, models_ab):
    alpha, _ = models_ab
    values = [0.0, 0.0004, 1.0, 9.99, 10.0, 10.01, 123.4, 99999.0]
    for value in values:
        message(conversation, at(0), model=alpha, ttft_ms=value)
    rollup.refresh()
    row = DailyUsage.objects.get(model=alpha)
    expected = histograms.total([{histograms.bucket_of(v): 1} for v in values])
    assert histograms.total([row.ttft_histogram]) == expected


def test_a_refresh_counts_new_finished_messages_once_and_waits_for_unfinished_ones(conversation, models_ab):
    alpha, _ = models_ab
    message(conversation, at(1), model=alpha, completion_tokens=10)
    rollup.refresh()
    generating = message(conversation, at(0), model=alpha, status=Message.Status.GENERATING)
    message(conversation, at(0), model=alpha, completion_tokens=5)  # finished, but after an unfinished one

    rollup.refresh()
    rollup.refresh()
    alpha_data = report.build(7)["models"][0]
    assert alpha_data["totals"]["replies"] == 1 and alpha_data["totals"]["completion_tokens"] == 10

    Message.objects.filter(pk=generating.pk).update(status=Message.Status.COMPLETE, completion_tokens=7)
    rollup.refresh()
    alpha_data = report.build(7)["models"][0]
    assert alpha_data["replies"][-2:] == [1, 2]
    assert alpha_data["totals"]["completion_tokens"] == 22


def test_rows_younger_than_the_settling_time_wait_for_a_later_refresh(conversation, models_ab, settings, alice):
    settings.DASHBOARD_SETTLE_S = 30
    reply = Message.objects.create(conversation=conversation, role="assistant", model=models_ab[0], completion_tokens=3)
    Feedback.objects.create(message=reply, user=alice, rating=1)
    rollup.refresh()
    data = report.build(7)
    assert data["empty"] is True and data["models"] == []
    a_minute_ago = timezone.now() - timedelta(minutes=1)
    Message.objects.filter(pk=reply.pk).update(created_at=a_minute_ago)
    Feedback.objects.filter(message=reply).update(created_at=a_minute_ago)
    rollup.refresh()
    model = report.build(7)["models"][0]
    assert model["totals"]["completion_tokens"] == 3 and model["feedback"]["up"] == 1


def test_counting_in_small_batches_gives_what_a_rebuild_gives(conversation, models_ab):
    alpha, beta = models_ab
    rng = random.Random(3)
    for i in range(60):
        message(
            conversation,
            at(rng.randrange(10), rng.randrange(24)),
            model=alpha if i % 3 else beta,
            prompt_tokens=i,
            completion_tokens=2 * i,
            ttft_ms=rng.uniform(10, 5000),
            tokens_per_s=rng.uniform(1, 50),
        )
        if i % 20 == 19:
            rollup.refresh(batch_ids=7)
    incremental = report.build(30)
    rollup.rebuild()
    rebuilt = report.build(30)
    incremental.pop("refreshed_at"), rebuilt.pop("refreshed_at")
    assert incremental == rebuilt
    assert DailyUsage.objects.count() == len({(d, m) for d, m in DailyUsage.objects.values_list("day", "model_id")})


def test_days_outside_the_period_are_left_out(conversation, models_ab):
    alpha, _ = models_ab
    message(conversation, at(8), model=alpha, completion_tokens=3)
    rollup.refresh()
    assert report.build(7)["empty"] is True
    assert report.build(30)["models"][0]["totals"]["completion_tokens"] == 3


def test_an_empty_database_gives_an_empty_report_with_every_day():
    rollup.refresh()
    data = report.build(7)
    assert data["empty"] is True
    assert len(data["days"]) == 7 and data["days"][-1] == timezone.localdate().isoformat()
    assert data["models"] == [] and data["messages"] == [0] * 7
    assert data["latency"]["ttft_ms"]["p50"] == [None] * 7
    assert data["moderation"]["flagged_rate"] == [None] * 7


def test_a_period_other_than_7_30_or_90_days_is_refused():
    with pytest.raises(ValueError):
        report.build(14)


# --- live counts ---------------------------------------------------------------------------------
def test_flagged_and_blocked_rates_are_events_over_the_days_messages(conversation, models_ab):
    alpha, _ = models_ab
    for _ in range(4):
        message(conversation, at(1), role=Message.Role.USER)
    for _ in range(4):
        message(conversation, at(1), model=alpha)
    for action, stage in (("flag", "input"), ("flag", "output"), ("block", "input"), ("mask", "output")):
        event = Event.objects.create(stage=stage, action=action, rule_name="r")
        Event.objects.filter(pk=event.pk).update(created_at=at(1))
    rollup.refresh()
    moderation = report.build(7)["moderation"]
    assert moderation["flagged"][5] == 2 and moderation["blocked"][5] == 1
    assert moderation["flagged_rate"][5] == pytest.approx(2 / 8)
    assert moderation["blocked_rate"][5] == pytest.approx(1 / 8)
    assert moderation["flagged_rate_period"] == pytest.approx(2 / 8)
    assert moderation["blocked_rate"][6] is None  # no messages today


def test_feedback_score_is_thumbs_up_minus_down_over_votes_per_model(conversation, models_ab, alice):
    alpha, beta = models_ab
    for rating in (1, 1, 1, -1, 0):
        Feedback.objects.create(message=message(conversation, at(0), model=alpha), user=alice, rating=rating)
    Feedback.objects.create(message=message(conversation, at(0), model=beta), user=alice, rating=-1)
    rollup.refresh()
    by_name = {m["name"]: m["feedback"] for m in report.build(7)["models"]}
    assert by_name["Alpha"] == {"up": 3, "down": 1, "score": 0.5}
    assert by_name["Beta"] == {"up": 0, "down": 1, "score": -1.0}

    Feedback.objects.filter(rating=-1, message__model=alpha).update(rating=1)  # a change of mind counts at once
    assert report.build(7)["models"][0]["feedback"] == {"up": 4, "down": 0, "score": 1.0}


def test_fine_tuning_jobs_started_in_the_period_are_counted_by_state(alice, models_ab):
    alpha, _ = models_ab
    dataset = Dataset.objects.create(
        owner=alice, name="facts", original_filename="f.jsonl", format="messages", file_name="x.jsonl",
        sha256="0" * 64, rows=4,
    )  # fmt: skip
    for state in ("succeeded", "succeeded", "failed", "running"):
        Job.objects.create(owner=alice, name="j", base_model=alpha, dataset=dataset, state=state)
    old = Job.objects.create(owner=alice, name="old", base_model=alpha, dataset=dataset, state="cancelled")
    Job.objects.filter(pk=old.pk).update(created_at=at(40))
    counts = {j["state"]: j["count"] for j in report.build(30)["jobs"]}
    assert counts == {
        "queued": 0, "validating": 0, "running": 1, "evaluating": 0, "succeeded": 2, "failed": 1, "cancelled": 0,
    }  # fmt: skip
    assert {j["state"]: j["count"] for j in report.build(90)["jobs"]}["cancelled"] == 1


# --- the page and who may see it -----------------------------------------------------------------
def test_staff_get_the_page_and_its_numbers(client, staff, conversation, models_ab):
    message(conversation, at(0), model=models_ab[0], completion_tokens=9)
    client.force_login(staff)
    page = client.get(reverse("dashboard:page") + "?days=7")
    assert page.status_code == 200
    assert b'aria-current="page"' in page.content and b"dashboard.js" in page.content
    data = client.get(reverse("dashboard:data") + "?days=7")
    assert data.status_code == 200
    assert data.json()["models"][0]["totals"]["completion_tokens"] == 9  # the request refreshed the rollup
    assert client.get(reverse("dashboard:data") + "?days=5").status_code == 400


def test_people_who_are_not_staff_are_sent_to_log_in_or_refused(client, alice):
    page_url, data_url = reverse("dashboard:page"), reverse("dashboard:data") + "?days=7"
    anonymous = client.get(page_url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert client.get(data_url).status_code == 403
    client.force_login(alice)
    assert client.get(page_url).status_code == 302
    assert client.get(data_url).status_code == 403


def test_the_admin_index_links_to_the_dashboard(client, staff):
    client.force_login(staff)
    assert reverse("dashboard:page").encode() in client.get(reverse("admin:index")).content


def test_the_rollupusage_command_counts_and_rebuilds(conversation, models_ab, capsys):
    from django.core.management import call_command

    last = message(conversation, at(0), model=models_ab[0], completion_tokens=4)
    call_command("rollupusage")
    assert f"through id {last.pk}" in capsys.readouterr().out
    DailyUsage.objects.update(completion_tokens=0)
    call_command("rollupusage", "--rebuild")
    assert DailyUsage.objects.get(model=models_ab[0]).completion_tokens == 4
