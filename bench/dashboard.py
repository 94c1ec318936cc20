"""Benchmark: the usage dashboard on a PostgreSQL database with a million messages.

    .venv/bin/python bench/dashboard.py [--messages 1000000] [--days 90] [--models 5] [--keep]

Creates a throw-away database (`bench_dashboard` on DATABASE_ADMIN_URL's server, dropped at the
end unless --keep), migrates it, and COPYs in the messages (people's questions and replies,
over `--days` days, several models), 2 % of replies rated, 1 % of messages flagged or blocked,
a few fine-tuning jobs. Then it times:

- the rollup's first full build (`dashboard.rollup.rebuild`);
- the JSON endpoint's view (`dashboard.views.data`, a staff request) for 7, 30 and 90 days, nothing new
  to count: what a page load costs;
- an incremental update: a fresh hour of messages COPYed in, then `rollup.refresh()`, and the
  next page load (which also refreshes);
- for comparison, the same numbers computed straight from `chat_message` (percentile_cont per
  day and model over the period): what the page would cost without the rollup.

Prints a Markdown report for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DB_NAME = "bench_dashboard"
WORDS = "the lighthouse keeper wrote a long letter about tides storms ships and the quiet harbor at night".split()


def admin_connection(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def create_database(admin_url: str) -> str:
    with admin_connection(admin_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    return admin_url.rsplit("/", 1)[0] + "/" + DB_NAME


def drop_database(admin_url: str) -> None:
    from django.db import connections

    connections.close_all()
    with admin_connection(admin_url) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME}")


def setup(database_url: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def columns_and_defaults(model) -> tuple[list[str], dict[str, object]]:
    """Every concrete column of `model` and its default, for the values a row leaves out (so the
    bench keeps working when a column with a default is added)."""
    columns, defaults = [], {}
    for field in model._meta.concrete_fields:
        columns.append(field.column)
        value = field.get_default()
        defaults[field.column] = json.dumps(value) if isinstance(value, dict | list) else value
    return columns, defaults


def copy_rows(table: str, columns: list[str], rows) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        raw = cursor.cursor  # psycopg 3
        with raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


def fill(args, rng: random.Random) -> dict:
    """Conversations, messages, feedback, moderation events, jobs. Returns what it made."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from chat.models import Conversation, Feedback, Message
    from finetuning.models import Dataset, Job
    from inference.models import LanguageModel
    from moderation.models import Event

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    staff = get_user_model().objects.create_user("bench-staff", password="bench-password-1", is_staff=True)
    models = [
        LanguageModel.objects.create(name=f"Model {i}", slug=f"model-{i}", source="local", location=f"/m/{i}")
        for i in range(args.models)
    ]
    model_weights = [1 / (i + 1) for i in range(args.models)]
    conversations = Conversation.objects.bulk_create([Conversation(user=user) for _ in range(2000)])
    conversation_ids = [c.pk for c in conversations]

    now = datetime.now(UTC)
    start = now - timedelta(days=args.days)
    pairs = args.messages // 2
    span = (now - start).total_seconds() - 3600  # the last hour is left for the incremental update
    offsets = sorted(rng.random() * span for _ in range(pairs))
    message_cols, message_defaults = columns_and_defaults(Message)
    replies: list[tuple[int, datetime]] = []

    def message_rows(first_id: int, times: list[float]):
        next_id = first_id
        for offset in times:
            asked = start + timedelta(seconds=offset)
            conversation = rng.choice(conversation_ids)
            model_id = rng.choices(models, model_weights)[0].pk
            ttft = rng.lognormvariate(5.5, 0.7)  # ms, median about 250
            speed = rng.lognormvariate(3.3, 0.4)  # tokens/s, median about 27
            completion = rng.randint(5, 600)
            status = rng.choices(["complete", "error", "stopped"], [0.98, 0.01, 0.01])[0]
            text = " ".join(rng.choices(WORDS, k=12))
            answered = asked + timedelta(milliseconds=ttft + 1000 * completion / speed)
            for row in (
                {"id": next_id, "role": "user", "model_id": None, "created_at": asked, "status": "complete"},
                {
                    "id": next_id + 1, "role": "assistant", "model_id": model_id, "created_at": answered,
                    "status": status, "finish_reason": "stop" if status == "complete" else status,
                    "prompt_tokens": rng.randint(10, 400), "completion_tokens": completion,
                    "ttft_ms": round(ttft, 1), "tokens_per_s": round(speed, 2),
                },
            ):  # fmt: skip
                row.update(
                    conversation_id=conversation, content=text, html=f"<p>{text}</p>", updated_at=row["created_at"]
                )
                if row["role"] == "assistant":
                    replies.append((row["id"], row["created_at"]))
                yield [row.get(c, message_defaults.get(c)) for c in message_cols]
            next_id += 2

    began = time.perf_counter()
    copy_rows(Message._meta.db_table, message_cols, message_rows(1, offsets))
    fill_s = time.perf_counter() - began

    rated = rng.sample(replies, len(replies) // 50)
    feedback_cols, feedback_defaults = columns_and_defaults(Feedback)
    copy_rows(
        Feedback._meta.db_table,
        feedback_cols,
        (
            [
                {"id": i + 1, "message_id": mid, "user_id": user.pk, "rating": rng.choice([1, 1, 1, -1]),
                 "created_at": when + timedelta(minutes=1), "updated_at": when + timedelta(minutes=1)}.get(c, feedback_defaults.get(c))
                for c in feedback_cols
            ]
            for i, (mid, when) in enumerate(rated)
        ),
    )  # fmt: skip
    events = rng.sample(replies, len(replies) // 50)  # 1 % of all messages
    event_cols, event_defaults = columns_and_defaults(Event)
    copy_rows(
        Event._meta.db_table,
        event_cols,
        (
            [
                {"id": i + 1, "message_id": mid, "stage": "output", "action": rng.choice(["flag", "flag", "block"]),
                 "rule_name": "bench", "created_at": when, "status": "pending"}.get(c, event_defaults.get(c))
                for c in event_cols
            ]
            for i, (mid, when) in enumerate(events)
        ),
    )  # fmt: skip
    with connection.cursor() as cursor:
        for model in (Message, Feedback, Event):
            table = model._meta.db_table
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        cursor.execute("ANALYZE")
    dataset = Dataset.objects.create(
        owner=user,
        name="d",
        original_filename="d.jsonl",
        format="messages",
        file_name="d.jsonl",
        sha256="0" * 64,
        rows=1,
    )
    for state in rng.choices([s for s, _ in Job.State.choices], k=40):
        Job.objects.create(owner=user, name="j", base_model=models[0], dataset=dataset, state=state)
    return {
        "staff": staff,
        "messages": 2 * pairs,
        "feedback": len(rated),
        "events": len(events),
        "fill_s": fill_s,
        "message_rows": message_rows,  # more of the same, for the incremental update
    }


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """The median wall time of `repeat` calls, in ms, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), result


def page_load(staff, days: int):
    from django.test import RequestFactory

    from dashboard import views

    request = RequestFactory().get("/admin/dashboard/data/", {"days": days})
    request.user = staff
    response = views.data(request)
    assert response.status_code == 200, response.status_code
    return response


def direct_aggregate_ms(days: int) -> float:
    """The numbers straight from chat_message: what the rollup saves."""
    from django.db import connection

    sql = """
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, model_id, count(*),
               sum(prompt_tokens), sum(completion_tokens),
               percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ttft_ms),
               percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY tokens_per_s)
        FROM chat_message WHERE created_at >= now() - %s * interval '1 day' GROUP BY 1, 2
    """

    def run():
        with connection.cursor() as cursor:
            cursor.execute(sql, [days])
            return cursor.fetchall()

    return timed(run, 3)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--new-messages", type=int, default=10_000, help="added for the incremental update")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    admin_url = os.environ.get("DATABASE_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    setup(create_database(admin_url))
    try:
        report(args)
    finally:
        if not args.keep:
            drop_database(admin_url)


def report(args) -> None:
    from django.db import connection

    from chat.models import Message
    from dashboard import rollup
    from dashboard.models import DailyUsage

    rng = random.Random(2026)
    began = time.perf_counter()
    made = fill(args, rng)
    total_fill_s = time.perf_counter() - began
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('chat_message'))")
        table_size = cursor.fetchone()[0]

    build_ms, _ = timed(rollup.rebuild)
    rollup_rows = DailyUsage.objects.count()
    staff = made["staff"]
    loads = {days: timed(lambda d=days: page_load(staff, d), 5) for days in (7, 30, 90)}
    noop_ms, _ = timed(rollup.refresh, 5)

    # An hour of new messages (the last hour, which fill left empty), then a refresh; then
    # another hour's worth, counted by the next page load.
    first_id = Message.objects.order_by("-id").values_list("id", flat=True).first() + 1
    last_hour = args.days * 86400 - 3600
    new = sorted(last_hour + rng.random() * 3500 for _ in range(args.new_messages // 2))
    columns, _ = columns_and_defaults(Message)
    copy_rows(Message._meta.db_table, columns, made["message_rows"](first_id, new))
    incremental_ms, _ = timed(rollup.refresh)
    copy_rows(Message._meta.db_table, columns, made["message_rows"](first_id + 2 * len(new), new))
    load_after_new_ms, response = timed(lambda: page_load(staff, 90))
    data = json.loads(response.content)
    direct = {days: direct_aggregate_ms(days) for days in (7, 90)}
    in_period = Message.objects.filter(created_at__date__gte=data["days"][0]).count()

    counted = sum(data["messages"])
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"PostgreSQL {connection.pg_version // 10000}, shared with other work on the machine:",
        "",
        f"- data: {made['messages']:,} messages over {args.days} days ({table_size}), {args.models} models, "
        f"{made['feedback']:,} ratings, {made['events']:,} moderation events; filled in {total_fill_s:.0f} s "
        f"(COPY of the messages {made['fill_s']:.0f} s)",
        f"- rollup: {rollup_rows} rows (day × model)",
        "",
        "| what | time |",
        "|---|---|",
        f"| first full build of the rollup ({made['messages']:,} messages) | {build_ms / 1000:.1f} s |",
        f"| refresh with nothing new | {noop_ms:.1f} ms |",
        f"| incremental refresh after {2 * len(new):,} new messages | {incremental_ms:.0f} ms |",
        f"| page load after {2 * len(new):,} more (refresh + 90-day JSON) | {load_after_new_ms:.0f} ms |",
        *(f"| JSON endpoint, {d} days (median of 5) | {ms:.0f} ms |" for d, (ms, _) in loads.items()),
        *(
            f"| without the rollup: percentile_cont over chat_message, {d} days | {ms:.0f} ms |"
            for d, ms in direct.items()
        ),
        "",
        f"The 90-day report counted {counted:,} messages; a direct count of the messages in those days gives "
        f"{in_period:,}.",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
