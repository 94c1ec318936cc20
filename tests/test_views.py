"""The chat page and its JSON endpoints: login, ownership, search, settings, delete, CSRF."""

import json

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, LanguageModel, Message
from chat.rendering import render_markdown

pytestmark = pytest.mark.django_db

ON_POSTGRESQL = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


@pytest.fixture
def small_model():
    return LanguageModel.objects.create(
        name="Small", slug="small", location="/models/small", max_tokens=64, max_new_tokens_cap=128, is_default=True
    )


@pytest.fixture
def big_model():
    return LanguageModel.objects.create(
        name="Big", slug="big", location="/models/big", max_tokens=256, max_new_tokens_cap=1024
    )


def make_conversation(user, title, *contents, model=None):
    conversation = Conversation.objects.create(user=user, title=title, model=model)
    for i, content in enumerate(contents):
        role = Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT
        Message.objects.create(conversation=conversation, role=role, content=content, html=render_markdown(content))
    return conversation


@pytest.fixture
def alices_chat(alice, small_model):
    return make_conversation(
        alice, "Trip to Paris", "Plan a **weekend** in Paris", "Start at the *Louvre*.", model=small_model
    )


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post_json(client, url, data):
    return client.post(url, json.dumps(data), content_type="application/json")


def urls_for(conversation_id):
    return {
        "page": reverse("chat:conversation", args=[conversation_id]),
        "update": reverse("chat:conversation_update", args=[conversation_id]),
        "delete": reverse("chat:conversation_delete", args=[conversation_id]),
        "messages": reverse("chat:conversation_messages", args=[conversation_id]),
    }


def snapshot(conversation):
    conversation = Conversation.objects.get(pk=conversation.pk)
    return (
        conversation.title,
        conversation.system_prompt,
        conversation.temperature,
        conversation.top_p,
        conversation.max_tokens,
        conversation.model_id,
        list(conversation.messages.values_list("id", "content")),
    )


# --- login ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "name", "args"),
    [
        ("get", "chat:home", []),
        ("get", "chat:conversation", [1]),
        ("get", "chat:conversation_list", []),
        ("post", "chat:conversation_update", [1]),
        ("post", "chat:conversation_delete", [1]),
        ("get", "chat:conversation_messages", [1]),
    ],
)
def test_every_page_and_endpoint_sends_an_anonymous_visitor_to_the_login_page(method, name, args):
    url = reverse(name, args=args)
    response = getattr(Client(), method)(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_an_anonymous_post_cannot_rename_or_delete_a_conversation(alices_chat):
    before = snapshot(alices_chat)
    urls = urls_for(alices_chat.pk)
    assert Client().post(urls["update"], {"title": "pwned"}).status_code == 302
    assert Client().post(urls["delete"]).status_code == 302
    assert snapshot(alices_chat) == before


# --- the page --------------------------------------------------------------------------------------
def test_the_owner_sees_her_conversation_with_its_rendered_messages(alice, alices_chat):
    response = client_for(alice).get(urls_for(alices_chat.pk)["page"])
    assert response.status_code == 200
    body = response.content.decode()
    assert "<p>Plan a <strong>weekend</strong> in Paris</p>" in body
    assert "<p>Start at the <em>Louvre</em>.</p>" in body
    assert "Trip to Paris" in body


def test_the_home_page_lists_only_the_users_own_conversations(alice, bob, alices_chat):
    make_conversation(bob, "Bob's secret plans", "hello")
    body = client_for(alice).get(reverse("chat:home")).content.decode()
    assert "Trip to Paris" in body
    assert "secret plans" not in body


# --- ownership -------------------------------------------------------------------------------------
def test_another_user_gets_404_for_every_url_of_a_conversation_and_changes_nothing(bob, alices_chat):
    before = snapshot(alices_chat)
    urls = urls_for(alices_chat.pk)
    bob_client = client_for(bob)
    assert bob_client.get(urls["page"]).status_code == 404
    assert post_json(bob_client, urls["update"], {"title": "Bob was here", "temperature": 1.5}).status_code == 404
    assert bob_client.post(urls["update"], {"title": "Bob was here"}).status_code == 404
    assert bob_client.post(urls["delete"]).status_code == 404
    response = bob_client.get(urls["messages"])
    assert response.status_code == 404
    assert b"Louvre" not in response.content
    assert snapshot(alices_chat) == before


def test_a_missing_conversation_gets_the_same_404_as_someone_elses(alice):
    urls = urls_for(999_999)
    client = client_for(alice)
    assert client.get(urls["page"]).status_code == 404
    assert client.get(urls["messages"]).status_code == 404
    assert client.post(urls["delete"]).status_code == 404


def test_the_owner_gets_her_messages_as_json(alice, alices_chat):
    response = client_for(alice).get(urls_for(alices_chat.pk)["messages"])
    assert response.status_code == 200
    messages = response.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == "Plan a **weekend** in Paris"
    assert messages[1]["html"] == "<p>Start at the <em>Louvre</em>.</p>"


# --- search ----------------------------------------------------------------------------------------
def search(user, query):
    response = client_for(user).get(reverse("chat:conversation_list"), {"q": query})
    assert response.status_code == 200
    return [c["title"] for c in response.json()["conversations"]]


def test_search_matches_titles_case_insensitively(alice, alices_chat):
    make_conversation(alice, "Groceries", "milk and eggs")
    assert search(alice, "paris") == ["Trip to Paris"]


def test_search_matches_message_content_and_lists_each_conversation_once(alice, alices_chat):
    make_conversation(alice, "Baking", "banana bread please", "Banana bread needs ripe bananas.", "more banana")
    assert search(alice, "BANANA") == ["Baking"]
    assert search(alice, "louvre") == ["Trip to Paris"]


def test_search_never_shows_another_users_conversations(alice, bob, alices_chat):
    make_conversation(bob, "Bob in Paris", "paris again")
    assert search(bob, "paris") == ["Bob in Paris"]
    assert search(bob, "louvre") == []
    assert search(alice, "paris") == ["Trip to Paris"]


def test_an_empty_search_lists_all_of_the_users_conversations(alice, bob, alices_chat):
    make_conversation(alice, "Second", "hi")
    make_conversation(bob, "Not hers", "hi")
    assert sorted(search(alice, "")) == ["Second", "Trip to Paris"]


# --- rename and settings --------------------------------------------------------------------------
def test_renaming_saves_the_trimmed_title(alice, alices_chat):
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {"title": "  Paris in May  "})
    assert response.status_code == 200
    assert response.json()["conversation"]["title"] == "Paris in May"
    alices_chat.refresh_from_db()
    assert alices_chat.title == "Paris in May"


@pytest.mark.parametrize("title", ["", "   "])
def test_renaming_to_an_empty_title_is_refused_with_a_message(alice, alices_chat, title):
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {"title": title})
    assert response.status_code == 400
    assert "empty" in response.json()["errors"]["title"]
    alices_chat.refresh_from_db()
    assert alices_chat.title == "Trip to Paris"


def test_renaming_to_a_too_long_title_is_refused(alice, alices_chat, settings):
    response = post_json(
        client_for(alice), urls_for(alices_chat.pk)["update"], {"title": "x" * (settings.CHAT_MAX_TITLE_CHARS + 1)}
    )
    assert response.status_code == 400
    assert str(settings.CHAT_MAX_TITLE_CHARS) in response.json()["errors"]["title"]
    alices_chat.refresh_from_db()
    assert alices_chat.title == "Trip to Paris"


def test_a_body_that_is_not_a_json_object_is_refused(alice, alices_chat):
    client = client_for(alice)
    url = urls_for(alices_chat.pk)["update"]
    for body in ("not json", "[1, 2]"):
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400
        assert response.json()["errors"]


def test_valid_settings_are_saved(alice, alices_chat, big_model):
    data = {"model": "big", "temperature": 0.3, "top_p": 0.8, "max_tokens": 700, "system_prompt": "Be brief."}
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], data)
    assert response.status_code == 200
    saved = response.json()["conversation"]
    assert {k: saved[k] for k in data} == data
    alices_chat.refresh_from_db()
    assert alices_chat.model == big_model
    assert (alices_chat.temperature, alices_chat.top_p, alices_chat.max_tokens) == (0.3, 0.8, 700)
    assert alices_chat.system_prompt == "Be brief."


def test_settings_sent_as_a_form_are_saved_too(alice, alices_chat):
    response = client_for(alice).post(urls_for(alices_chat.pk)["update"], {"temperature": "1.2", "max_tokens": "50"})
    assert response.status_code == 200
    alices_chat.refresh_from_db()
    assert (alices_chat.temperature, alices_chat.max_tokens) == (1.2, 50)


def test_empty_values_clear_the_settings_back_to_the_model_defaults(alice, alices_chat):
    alices_chat.temperature, alices_chat.top_p, alices_chat.max_tokens = 0.1, 0.5, 10
    alices_chat.save()
    response = post_json(
        client_for(alice), urls_for(alices_chat.pk)["update"], {"temperature": None, "top_p": "", "max_tokens": None}
    )
    assert response.status_code == 200
    alices_chat.refresh_from_db()
    assert (alices_chat.temperature, alices_chat.top_p, alices_chat.max_tokens) == (None, None, None)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 129}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"model": "no-such-model"}, "model"),
        ({"system_prompt": "x" * 8001}, "system_prompt"),
    ],
)
def test_an_invalid_setting_is_refused_with_an_error_for_that_field(alice, alices_chat, data, field):
    before = snapshot(alices_chat)
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], data)
    assert response.status_code == 400
    assert response.json()["errors"][field]
    assert snapshot(alices_chat) == before


def test_max_tokens_above_the_models_cap_is_refused_and_the_cap_is_named(alice, alices_chat):
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {"max_tokens": 129})
    assert response.status_code == 400
    assert "128" in response.json()["errors"]["max_tokens"]


def test_max_tokens_is_checked_against_the_cap_of_the_model_chosen_in_the_same_request(alice, alices_chat, big_model):
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {"model": "big", "max_tokens": 1000})
    assert response.status_code == 200
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {"model": "small", "max_tokens": 1000})
    assert response.status_code == 400


def test_a_disabled_model_cannot_be_chosen(alice, alices_chat, big_model):
    big_model.enabled = False
    big_model.save()
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {"model": "big"})
    assert response.status_code == 400
    alices_chat.refresh_from_db()
    assert alices_chat.model.slug == "small"


def test_one_bad_field_saves_none_of_the_others(alice, alices_chat):
    before = snapshot(alices_chat)
    response = post_json(
        client_for(alice), urls_for(alices_chat.pk)["update"], {"title": "New title", "temperature": 0.5, "top_p": 7}
    )
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"top_p"}
    assert snapshot(alices_chat) == before


# --- delete ----------------------------------------------------------------------------------------
def test_delete_removes_the_conversation_and_its_messages(alice, alices_chat):
    other = make_conversation(alice, "Keep me", "still here")
    message_ids = list(alices_chat.messages.values_list("id", flat=True))
    assert len(message_ids) == 2
    response = client_for(alice).post(urls_for(alices_chat.pk)["delete"])
    assert response.status_code == 200
    assert response.json() == {"deleted": alices_chat.pk}
    assert not Conversation.objects.filter(pk=alices_chat.pk).exists()
    assert not Message.objects.filter(pk__in=message_ids).exists()
    assert Conversation.objects.filter(pk=other.pk).exists() and other.messages.count() == 1
    assert client_for(alice).get(urls_for(alices_chat.pk)["page"]).status_code == 404


# --- methods and CSRF ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["update", "delete"])
def test_a_get_on_a_post_only_endpoint_is_405_and_changes_nothing(alice, alices_chat, name):
    before = snapshot(alices_chat)
    response = client_for(alice).get(urls_for(alices_chat.pk)[name], {"title": "via get"})
    assert response.status_code == 405
    assert snapshot(alices_chat) == before


@pytest.mark.parametrize("name", ["page", "messages"])
def test_a_post_on_a_get_only_page_is_405(alice, alices_chat, name):
    assert client_for(alice).post(urls_for(alices_chat.pk)[name]).status_code == 405


def test_a_post_on_the_conversation_list_is_405(alice):
    assert client_for(alice).post(reverse("chat:conversation_list")).status_code == 405


def test_a_post_without_a_csrf_token_is_refused(alice, alices_chat):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    urls = urls_for(alices_chat.pk)
    assert post_json(client, urls["update"], {"title": "forged"}).status_code == 403
    assert client.post(urls["delete"]).status_code == 403
    alices_chat.refresh_from_db()
    assert alices_chat.title == "Trip to Paris"


def test_a_post_with_the_pages_csrf_token_is_accepted(alice, alices_chat):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    urls = urls_for(alices_chat.pk)
    assert client.get(urls["page"]).status_code == 200
    token = client.cookies["csrftoken"].value
    response = client.post(
        urls["update"], json.dumps({"title": "Real"}), content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert response.status_code == 200
    alices_chat.refresh_from_db()
    assert alices_chat.title == "Real"


def test_switching_to_a_model_with_a_lower_cap_never_leaves_max_tokens_above_it(alice, alices_chat, big_model):
    client = client_for(alice)
    url = urls_for(alices_chat.pk)["update"]
    assert post_json(client, url, {"model": "big", "max_tokens": 1000}).status_code == 200
    response = post_json(client, url, {"model": "small"})
    alices_chat.refresh_from_db()
    # Either refusal or clamping would do; a saved value above the new cap must not.
    assert response.status_code == 400 or alices_chat.max_tokens <= 128


def test_a_nul_character_in_a_title_or_a_search_is_never_a_server_error(alice, alices_chat):
    client = client_for(alice)
    response = post_json(client, urls_for(alices_chat.pk)["update"], {"title": "a\x00b", "system_prompt": "c\x00d"})
    assert response.status_code in (200, 400)
    response = client.get(reverse("chat:conversation_list"), {"q": "a\x00b"})
    assert response.status_code in (200, 400)
