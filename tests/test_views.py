"""The chat page and its JSON endpoints: login, ownership, search, settings, delete, CSRF."""

import json
import re

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, LanguageModel, Message
from chat.rendering import render_markdown
from inference.sampling import MAX_SEED, RULES, SAMPLING_FIELDS

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
        *(getattr(conversation, name) for name in SAMPLING_FIELDS),
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


def page_config(response) -> dict:
    match = re.search(
        r'<script id="chat-config" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, "the page has no chat-config JSON"
    return json.loads(match.group(1))


def test_the_page_hands_every_enabled_models_defaults_to_its_script(alice, small_model, big_model):
    big_model.top_k, big_model.repetition_penalty, big_model.presence_penalty = 7, 1.4, 0.5
    big_model.save()
    LanguageModel.objects.create(name="Off", slug="off", location="/models/off", enabled=False)
    config = page_config(client_for(alice).get(reverse("chat:home")))
    models = {m["slug"]: m for m in config["models"]}
    assert set(models) == {"small", "big"}
    for model in (small_model, big_model):
        expected = {name: getattr(model, name) for name in SAMPLING_FIELDS} | {"max_tokens": model.max_tokens}
        assert models[model.slug]["defaults"] == expected
        assert models[model.slug]["maxTokensCap"] == model.max_new_tokens_cap
    assert models["big"]["defaults"]["top_k"] == 7


def test_the_page_hands_the_bounds_and_help_of_every_setting_to_its_script(alice, small_model):
    fields = {f["name"]: f for f in page_config(client_for(alice).get(reverse("chat:home")))["settingFields"]}
    assert set(fields) == {*SAMPLING_FIELDS, "max_tokens", "seed"}
    for name in SAMPLING_FIELDS:
        rule = RULES[name]
        assert (float(fields[name]["min"]), float(fields[name]["max"])) == (rule.lo, rule.hi)
        assert (fields[name]["help"], fields[name]["integer"], fields[name]["saved"]) == (rule.help, rule.integer, True)
    assert (fields["seed"]["min"], fields["seed"]["max"], fields["seed"]["saved"]) == ("0", str(MAX_SEED), False)


def test_every_setting_has_a_labelled_input_with_help_and_a_place_for_its_error(alice, small_model):
    body = client_for(alice).get(reverse("chat:home")).content.decode()
    for name in (*SAMPLING_FIELDS, "max_tokens", "seed"):
        field_id = name.replace("_", "-")
        assert f'<label for="{field_id}"' in body
        tag = re.search(rf'<input type="number" id="{field_id}"[^>]*>', body, re.S)
        assert tag, f"no input for {name}"
        assert f'name="{name}"' in tag.group(0) and re.search(r'title="[^"]{10,}"', tag.group(0))
        assert f'data-error-for="{name}"' in body
    for name in SAMPLING_FIELDS:
        assert f'title="{RULES[name].help}"' in body


def test_the_saved_settings_fill_the_panel_and_open_more_settings(alice, alices_chat):
    alices_chat.top_k, alices_chat.repetition_penalty, alices_chat.temperature = 12, 1.3, 0.25
    alices_chat.save()
    body = client_for(alice).get(urls_for(alices_chat.pk)["page"]).content.decode()
    assert re.search(r'<input type="number" id="top-k"[^>]*value="12"', body, re.S)
    assert re.search(r'<input type="number" id="repetition-penalty"[^>]*value="1.3"', body, re.S)
    assert re.search(r'<input type="number" id="temperature"[^>]*value="0.25"', body, re.S)
    assert re.search(r'<input type="number" id="min-p"[^>]*value=""', body, re.S)
    assert re.search(r'<details class="more-settings"[^>]* open>', body)


def test_more_settings_stays_folded_when_none_of_them_is_set(alice, alices_chat):
    body = client_for(alice).get(urls_for(alices_chat.pk)["page"]).content.decode()
    assert re.search(r'<details class="more-settings"[^>]*data-testid="more-settings">', body)


def test_the_chat_page_has_no_inline_script_handler_or_style(alice, alices_chat):
    body = client_for(alice).get(urls_for(alices_chat.pk)["page"]).content.decode()
    for attrs in re.findall(r"<script\b([^>]*)>", body):
        assert "src=" in attrs or 'type="application/json"' in attrs, f"inline script: <script{attrs}>"
    assert not re.search(r"<[^>]+\sstyle\s*=", body)
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", body, re.I)


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
        ({"top_k": -1}, "top_k"),
        ({"top_k": 1001}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.4}, "repetition_penalty"),
        ({"repetition_penalty": 2.01}, "repetition_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"presence_penalty": "lots"}, "presence_penalty"),
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


NEW_SAMPLING = {
    "top_k": 12,
    "min_p": 0.1,
    "repetition_penalty": 1.3,
    "frequency_penalty": -0.5,
    "presence_penalty": 0.4,
}


def test_top_k_min_p_and_the_penalties_are_saved_and_returned(alice, alices_chat):
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], NEW_SAMPLING)
    assert response.status_code == 200
    saved = response.json()["conversation"]
    assert {k: saved[k] for k in NEW_SAMPLING} == NEW_SAMPLING
    alices_chat.refresh_from_db()
    assert {k: getattr(alices_chat, k) for k in NEW_SAMPLING} == NEW_SAMPLING
    assert isinstance(alices_chat.top_k, int)


def test_top_k_and_the_penalties_sent_as_form_text_are_saved_as_numbers(alice, alices_chat):
    data = {"top_k": "40", "repetition_penalty": "1.25", "frequency_penalty": "-2", "presence_penalty": "2"}
    response = client_for(alice).post(urls_for(alices_chat.pk)["update"], data)
    assert response.status_code == 200
    alices_chat.refresh_from_db()
    assert (alices_chat.top_k, alices_chat.repetition_penalty) == (40, 1.25)
    assert (alices_chat.frequency_penalty, alices_chat.presence_penalty) == (-2.0, 2.0)


@pytest.mark.parametrize("name", SAMPLING_FIELDS)
def test_an_out_of_range_setting_is_refused_with_its_bounds_and_help(alice, alices_chat, name):
    rule = RULES[name]
    before = snapshot(alices_chat)
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], {name: rule.hi + 1})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {name}
    assert f"{rule.hi:g}" in errors[name] and rule.help in errors[name]
    assert snapshot(alices_chat) == before


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf"])
def test_a_setting_that_is_not_a_finite_number_is_refused(alice, alices_chat, text):
    before = snapshot(alices_chat)
    for data in ({"temperature": text}, {"repetition_penalty": text}):
        response = client_for(alice).post(urls_for(alices_chat.pk)["update"], data)
        assert response.status_code == 400
        assert set(response.json()["errors"]) == set(data)
    assert snapshot(alices_chat) == before


def test_empty_values_reset_top_k_min_p_and_the_penalties_to_the_model_defaults(alice, alices_chat):
    for name, value in NEW_SAMPLING.items():
        setattr(alices_chat, name, value)
    alices_chat.save()
    data = {"top_k": "", "min_p": None, "repetition_penalty": "", "frequency_penalty": None, "presence_penalty": ""}
    response = post_json(client_for(alice), urls_for(alices_chat.pk)["update"], data)
    assert response.status_code == 200
    assert all(response.json()["conversation"][name] is None for name in data)
    alices_chat.refresh_from_db()
    assert {name: getattr(alices_chat, name) for name in data} == dict.fromkeys(data)


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
def test_delete_hides_the_conversation_from_its_user_and_keeps_it_for_the_logs(alice, alices_chat):
    other = make_conversation(alice, "Keep me", "still here")
    message_ids = list(alices_chat.messages.values_list("id", flat=True))
    assert len(message_ids) == 2
    response = client_for(alice).post(urls_for(alices_chat.pk)["delete"])
    assert response.status_code == 200
    assert response.json() == {"deleted": alices_chat.pk}
    assert not Conversation.objects.visible().filter(pk=alices_chat.pk).exists()
    assert not Message.objects.visible().filter(pk__in=message_ids).exists()
    assert Conversation.objects.get(pk=alices_chat.pk).deleted_at is not None  # kept for the admins' logs
    assert Message.objects.filter(pk__in=message_ids).count() == 2
    assert Conversation.objects.visible().filter(pk=other.pk).exists() and other.messages.count() == 1
    assert client_for(alice).get(urls_for(alices_chat.pk)["page"]).status_code == 404
    assert client_for(alice).post(urls_for(alices_chat.pk)["delete"]).status_code == 404


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


def test_an_unknown_or_deleted_conversation_gets_a_styled_404_with_a_way_back(client, alice):
    """Issue 25, item 9: a bare, unstyled "Not Found"."""
    client.force_login(alice)
    response = client.get("/c/999999/")
    page = response.content.decode()
    assert response.status_code == 404
    assert 'data-testid="error-page"' in page and "chat/chat.css" in page and 'data-testid="error-home"' in page
    assert 'data-testid="username"' in page  # the site's header, with the account
