"""Per-user message rate and daily token quota: user beats group beats the settings."""

import datetime as dt

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import IntegrityError

from chat.models import Conversation, Message
from inference import streams
from presets import quotas
from presets.models import Quota

from .socket_client import connect, receive, send


def add_reply(user, prompt_tokens: int, completion_tokens: int, when: dt.datetime | None = None) -> Message:
    conversation = Conversation.objects.create(user=user, title="Chat")
    reply = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        content="hello",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )
    if when is not None:
        Message.objects.filter(pk=reply.pk).update(created_at=when)
    return reply


# --- which limit applies ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_without_overrides_the_settings_are_the_limits(alice, settings):
    settings.CHAT_RATE_LIMIT = 7
    settings.CHAT_DAILY_TOKEN_QUOTA = 1000
    assert quotas.limits_for(alice) == quotas.Limits(7, settings.CHAT_RATE_WINDOW_S, 1000)


@pytest.mark.django_db
def test_a_group_quota_beats_the_settings_and_a_user_quota_beats_the_group(alice, settings):
    settings.CHAT_RATE_LIMIT = 7
    settings.CHAT_DAILY_TOKEN_QUOTA = 1000
    group = Group.objects.create(name="students")
    alice.groups.add(group)
    Quota.objects.create(group=group, messages_per_window=3, daily_tokens=500)
    assert quotas.limits_for(alice).messages_per_window == 3
    assert quotas.limits_for(alice).daily_tokens == 500
    Quota.objects.create(user=alice, daily_tokens=5000)  # rate left empty: inherited from the group
    limits = quotas.limits_for(alice)
    assert (limits.messages_per_window, limits.daily_tokens) == (3, 5000)


@pytest.mark.django_db
def test_of_several_groups_the_most_generous_wins_and_zero_means_unlimited(alice, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 1000
    for name, tokens in (("a", 200), ("b", 900)):
        group = Group.objects.create(name=name)
        alice.groups.add(group)
        Quota.objects.create(group=group, daily_tokens=tokens)
    assert quotas.limits_for(alice).daily_tokens == 900
    staff = Group.objects.create(name="staff")
    alice.groups.add(staff)
    Quota.objects.create(group=staff, daily_tokens=0)
    assert quotas.limits_for(alice).daily_tokens == 0


@pytest.mark.django_db
def test_another_users_quota_does_not_apply(alice, bob, settings):
    settings.CHAT_RATE_LIMIT = 7
    Quota.objects.create(user=bob, messages_per_window=1)
    assert quotas.limits_for(alice).messages_per_window == 7


@pytest.mark.django_db
def test_a_quota_is_for_exactly_one_user_or_group(alice):
    with pytest.raises(ValidationError):
        Quota(daily_tokens=5).full_clean()
    with pytest.raises(IntegrityError):
        Quota.objects.create(user=alice, group=Group.objects.create(name="g"), daily_tokens=5)


# --- daily tokens ----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_tokens_today_count_prompt_and_completion_tokens_of_todays_replies_only(alice, bob):
    now = dt.datetime(2026, 3, 4, 15, 0, tzinfo=dt.UTC)
    add_reply(alice, 100, 20, when=now - dt.timedelta(hours=1))
    add_reply(alice, 30, 5, when=now - dt.timedelta(hours=16))  # yesterday (UTC)
    add_reply(bob, 1000, 1000, when=now - dt.timedelta(hours=1))
    assert quotas.tokens_today(alice, now) == 120


@pytest.mark.django_db
def test_over_the_daily_quota_the_error_says_when_it_resets(alice):
    now = dt.datetime(2026, 3, 4, 21, 30, tzinfo=dt.UTC)
    add_reply(alice, 400, 100, when=now - dt.timedelta(minutes=5))
    limits = quotas.Limits(0, 60, 500)
    with pytest.raises(quotas.QuotaExceeded) as info:
        quotas.check_daily_tokens(alice, limits, now)
    assert info.value.code == "quota_exceeded"
    assert info.value.retry_after == 2 * 3600 + 30 * 60
    assert "500 of 500 tokens" in info.value.message
    assert "resets at 00:00 UTC" in info.value.message and "retry in 2 h 30 min" in info.value.message
    quotas.check_daily_tokens(alice, quotas.Limits(0, 60, 501), now)  # one token left: allowed
    quotas.check_daily_tokens(alice, quotas.Limits(0, 60, 0), now)  # unlimited


# --- through the chat socket -----------------------------------------------------------------------
async def _clear_rate_counters() -> None:
    client = streams.async_client()
    keys = [k async for k in client.scan_iter("chat:rate:*")]
    if keys:
        await client.delete(*keys)


async def _error(ws) -> dict:
    frame = await receive(ws)
    while frame["type"] != "chat.error":
        frame = await receive(ws)
    return frame


@pytest.mark.django_db(transaction=True)
async def test_a_users_own_rate_limit_refuses_the_next_message_with_when_to_retry(alice, tiny_model, settings):
    settings.CHAT_RATE_LIMIT = 100
    await database_sync_to_async(Quota.objects.create)(user=alice, messages_per_window=1)
    await _clear_rate_counters()
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "one"})
    started = await receive(ws)
    assert started["type"] == "chat.started"
    await send(ws, {"type": "chat.stop", "message": started["message"]})
    await send(ws, {"type": "chat.send", "content": "two"})
    frame = await _error(ws)
    assert frame["code"] == "rate_limited"
    assert "limit 1 per" in frame["message"] and "Retry in" in frame["message"]
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_user_over_the_daily_token_quota_is_refused_with_the_reset_time(alice, tiny_model, settings):
    settings.CHAT_DAILY_TOKEN_QUOTA = 100
    await _clear_rate_counters()
    await database_sync_to_async(add_reply)(alice, 90, 10)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "more please"})
    frame = await _error(ws)
    assert frame["code"] == "quota_exceeded"
    assert "100 of 100 tokens" in frame["message"] and "UTC; retry in" in frame["message"]
    assert await database_sync_to_async(Message.objects.filter(role="user").count)() == 0
    await ws.disconnect()


@pytest.mark.django_db
def test_an_admin_sets_a_group_quota_in_the_admin(django_user_model, alice):
    from django.test import Client

    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", password="root-pass-123"))
    group = Group.objects.create(name="interns")
    alice.groups.add(group)
    assert client.get("/admin/presets/quota/add/").status_code == 200
    response = client.post("/admin/presets/quota/add/", {"group": group.pk, "daily_tokens": "5000"})
    assert response.status_code == 302
    assert quotas.limits_for(alice).daily_tokens == 5000
    response = client.post("/admin/presets/quota/add/", {"daily_tokens": "10"})
    assert response.status_code == 200 and "either a user or a group" in response.content.decode()
    assert client.get("/admin/presets/quota/").status_code == 200
