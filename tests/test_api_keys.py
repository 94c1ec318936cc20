"""API keys: created on the settings page (shown once, stored as a digest), revoked, per user;
the admin's view of usage; `manage.py createapikey`."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import CommandError, call_command

from api import keys
from api.models import SCOPES, ApiKey

pytestmark = pytest.mark.django_db


def test_a_new_key_is_shown_once_and_stored_only_as_a_digest(client, alice):
    client.force_login(alice)
    page = client.post("/settings/api-keys/", {"name": "notebook"}).content.decode()
    key = re.search(r'id="new-key" readonly value="(sk-[^"]+)"', page).group(1)
    row = ApiKey.objects.get(user=alice)
    assert row.name == "notebook" and key.startswith(row.prefix) and key not in row.digest
    assert keys.find(key) == row
    again = client.get("/settings/api-keys/").content.decode()
    assert key not in again and row.prefix in again


def test_revoking_stops_the_key_and_another_user_cannot_touch_it(client, alice, bob):
    row, key = keys.create(alice, "script")
    client.force_login(bob)
    assert client.post(f"/settings/api-keys/{row.pk}/revoke/").status_code == 404
    assert keys.find(key) == row
    client.force_login(alice)
    assert client.post(f"/settings/api-keys/{row.pk}/revoke/").status_code == 302
    assert keys.find(key) is None


def test_the_page_needs_a_login_and_the_api_needs_a_key(client, alice):
    assert client.get("/settings/api-keys/").status_code == 302
    _, key = keys.create(alice)
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    alice.is_active = False
    alice.save()
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


def test_createapikey_prints_a_working_key_and_names_a_missing_user(alice):
    out = io.StringIO()
    call_command("createapikey", "alice", stdout=out)
    assert keys.find(out.getvalue().strip()).user == alice
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("createapikey", "nobody")


def test_the_admin_shows_each_key_s_usage_and_creates_one_shown_once(admin_client, alice):
    row, key = keys.create(alice, "usage")
    keys.count_use(row, prompt_tokens=30, completion_tokens=12)
    page = admin_client.get("/admin/api/apikey/").content.decode()
    assert row.prefix in page and ">30<" in page and ">12<" in page and key not in page
    response = admin_client.post("/admin/api/apikey/add/", {"user": alice.pk, "name": "from admin"}, follow=True)
    shown = re.search(r"(sk-[A-Za-z0-9_-]{20,})", response.content.decode()).group(1)
    assert keys.find(shown).name == "from admin"


def test_a_user_has_at_most_twenty_active_keys(client, alice):
    for _ in range(keys.MAX_KEYS_PER_USER):
        keys.create(alice)
    client.force_login(alice)
    page = client.post("/settings/api-keys/", {"name": "one more"}, follow=True).content.decode()
    assert "revoke one first" in page and ApiKey.objects.filter(user=alice).count() == keys.MAX_KEYS_PER_USER


def test_the_daily_token_quota_counts_api_calls_too(client, alice, tiny_model, settings):
    from chat.models import Conversation, Message

    settings.CHAT_DAILY_TOKEN_QUOTA = 10
    conversation = Conversation.objects.create(user=alice, source="api", model=tiny_model)
    Message.objects.create(conversation=conversation, role="assistant", prompt_tokens=8, completion_tokens=5)
    _, key = keys.create(alice)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post(
        "/v1/chat/completions", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}"
    )
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert "daily token quota (13 of 10" in response.json()["error"]["message"]


def test_api_calls_are_logged_but_not_listed_or_continued_on_the_chat_page(client, alice, tiny_model):
    from chat import turns
    from chat.models import Conversation

    api_call = Conversation.objects.create(user=alice, source="api", title="from a script", model=tiny_model)
    client.force_login(alice)
    assert "from a script" not in client.get("/api/conversations/").content.decode()
    assert client.get(f"/c/{api_call.pk}/").status_code == 404
    with pytest.raises(turns.TurnError) as error:
        turns.start_turn(alice, api_call.pk, "continue it", None, None)
    assert error.value.code == "not_found"


def test_who_may_make_a_key_for_whom_and_the_key_is_never_in_a_cookie(client, admin_user, alice, django_user_model):
    """Issue 24, finding 5: staff who may add keys could mint one for anyone, superusers included,
    and the new key travelled in the (signed, unencrypted) messages cookie."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.auth.models import Permission

    staff = django_user_model.objects.create_user("keymaker", password="keymaker-pass-1", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=("add_apikey", "view_apikey")))
    root2 = django_user_model.objects.create_superuser("root2", password="root2-pass-123")
    client.force_login(staff)
    for target in (alice, admin_user):
        response = client.post("/admin/api/apikey/add/", {"user": target.pk, "name": "x"})
        assert response.status_code == 200 and "Only a superuser may create a key for another user" in (
            response.content.decode()
        )
    assert not ApiKey.objects.exists()
    response = client.post("/admin/api/apikey/add/", {"user": staff.pk, "name": "mine"})
    shown = re.search(r"(sk-[A-Za-z0-9_-]{20,})", response.content.decode()).group(1)
    assert keys.find(shown).user == staff and "no-store" in response["Cache-Control"]
    assert "messages" not in response.cookies and shown not in str(response.cookies)

    client.force_login(admin_user)
    refused = client.post("/admin/api/apikey/add/", {"user": root2.pk, "name": "x"})
    assert "A key for another superuser cannot be made here" in refused.content.decode()
    made = client.post("/admin/api/apikey/add/", {"user": alice.pk, "name": "for alice"})
    assert made.status_code == 200 and "messages" not in made.cookies
    assert ApiKey.objects.filter(user=alice).count() == 1 and not ApiKey.objects.filter(user=root2).exists()
    entry = LogEntry.objects.filter(user=admin_user).latest("pk")
    assert "for alice" in entry.get_change_message()


def test_a_key_s_expiry_scopes_and_read_only_flag_limit_what_it_reaches(client, alice, settings, tiny_model):
    """Issue 24, finding 11: keys had no expiry or scopes."""
    from datetime import timedelta

    from django.utils import timezone

    settings.API_RATE_LIMIT = 0
    _, chat_only = keys.create(alice, "chat", scopes=["chat"])
    _, reader = keys.create(alice, "reader", read_only=True)
    expiring, soon = keys.create(alice, "soon", expires_at=timezone.now() + timedelta(days=1))

    def call(key, method, path, **extra):
        return getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {key}", **extra)

    assert call(chat_only, "get", "/v1/models").status_code == 200
    refused = call(chat_only, "get", "/v1/files")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"
    assert "its scopes are chat" in refused.json()["error"]["message"]
    assert call(reader, "get", "/v1/evals").status_code == 200
    refused = call(reader, "post", "/v1/evals", data={}, content_type="application/json")
    assert refused.status_code == 403 and "read-only" in refused.json()["error"]["message"]
    assert call(soon, "get", "/v1/models").status_code == 200
    ApiKey.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    expired = call(soon, "get", "/v1/models")
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "expired_api_key"
    with pytest.raises(keys.KeyLimitError, match="Unknown scope"):
        keys.create(alice, scopes=["everything"])


def test_the_keys_page_sets_expiry_scopes_and_read_only(client, alice):
    client.force_login(alice)
    page = client.post("/settings/api-keys/", {"name": "nb", "expires_in": "30", "scopes": ["chat", "evals"],
                                                "read_only": "on"}).content.decode()  # fmt: skip
    row = ApiKey.objects.get(name="nb")
    assert row.scopes == ["chat", "evals"] and row.read_only and row.expires_at is not None
    assert "chat, evals (read-only)" in page
    client.post("/settings/api-keys/", {"name": "all", "expires_in": "", "scopes": list(SCOPES)})
    assert ApiKey.objects.get(name="all").scopes == []  # every scope ticked: everything
    page = client.post("/settings/api-keys/", {"name": "odd", "expires_in": "3"}, follow=True).content.decode()
    assert "Choose when the key expires" in page and not ApiKey.objects.filter(name="odd").exists()


def test_a_rate_limit_of_zero_is_refused_and_a_refused_request_is_not_counted(admin_client, alice, settings):
    response = admin_client.post("/admin/api/apikey/add/", {"user": alice.pk, "name": "z", "rate_limit": "0"})
    assert "Ensure this value is greater than or equal to 1" in response.content.decode()
    assert not ApiKey.objects.filter(name="z").exists()
    settings.API_RATE_LIMIT = 1
    row, key = keys.create(alice, "limited")
    from django.test import Client

    from inference import streams

    redis = streams.client()
    for stale in redis.scan_iter(f"chat:rate:apikey-{row.pk}:*"):  # an earlier test's key of the same id
        redis.delete(stale)

    client = Client()
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 429
    row.refresh_from_db()
    assert row.requests == 1  # the refused request is not counted as a use
