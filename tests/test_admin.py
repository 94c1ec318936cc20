"""The admin: models are managed there (one default, never a disabled default); conversations and
messages can be looked at but not changed; only staff get in."""

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from chat.models import Conversation, LanguageModel, Message
from inference.sampling import SAMPLING_FIELDS

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(django_user_model) -> Client:
    root = django_user_model.objects.create_superuser("root", "root@example.com", "root-pass-123")
    client = Client()
    client.force_login(root)
    return client


@pytest.fixture
def first():
    return LanguageModel.objects.create(name="First", slug="first", location="models/first", is_default=True)


@pytest.fixture
def second():
    return LanguageModel.objects.create(name="Second", slug="second", location="models/second")


@pytest.fixture
def alices_chat(alice, first):
    conversation = Conversation.objects.create(user=alice, title="Alice's chat", model=first)
    Message.objects.create(conversation=conversation, role=Message.Role.USER, content="Hello admin")
    return conversation


def defaults() -> list[str]:
    return list(LanguageModel.objects.filter(is_default=True).values_list("slug", flat=True))


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def form_data(model: LanguageModel, **changes) -> dict:
    """The change form's fields for `model`, with `changes` applied (False leaves a checkbox out)."""
    data = {
        "name": model.name,
        "slug": model.slug,
        "enabled": model.enabled,
        "is_default": model.is_default,
        "source": model.source,
        "location": model.location,
        "backend": model.backend,
        "gguf_file": model.gguf_file,
        "device": model.device,
        "dtype": model.dtype,
        "system_prompt": model.system_prompt,
        **{name: getattr(model, name) for name in SAMPLING_FIELDS},
        "max_tokens": model.max_tokens,
        "max_new_tokens_cap": model.max_new_tokens_cap,
        "max_input_tokens": model.max_input_tokens,
        **changes,
    }
    return {k: ("on" if v is True else v) for k, v in data.items() if v is not False}


def run_action(client: Client, action: str, *models: LanguageModel):
    return client.post(
        reverse("admin:inference_languagemodel_changelist"),
        {"action": action, ACTION_CHECKBOX_NAME: [str(m.pk) for m in models], "index": "0"},
        follow=True,
    )


# --- access ------------------------------------------------------------------------------------
def test_a_superuser_can_open_the_model_list_and_the_add_page(admin_client, first, second):
    response = admin_client.get(reverse("admin:inference_languagemodel_changelist"))
    assert response.status_code == 200
    assert b"First" in response.content and b"Second" in response.content
    response = admin_client.get(reverse("admin:inference_languagemodel_add"))
    assert response.status_code == 200
    assert b'name="max_new_tokens_cap"' in response.content


def test_a_superuser_can_open_a_models_change_page(admin_client, first):
    response = admin_client.get(reverse("admin:inference_languagemodel_change", args=[first.pk]))
    assert response.status_code == 200
    assert b'value="models/first"' in response.content


@pytest.mark.parametrize(
    "url",
    ["admin:index", "admin:inference_languagemodel_changelist", "admin:chat_conversation_changelist"],
)
def test_a_user_who_is_not_staff_is_sent_to_the_admin_login(alice, url):
    client = Client()
    client.force_login(alice)
    response = client.get(reverse(url))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_an_anonymous_visitor_is_sent_to_the_admin_login():
    response = Client().get(reverse("admin:inference_languagemodel_changelist"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_a_user_who_is_not_staff_cannot_add_a_model(alice, first):
    client = Client()
    client.force_login(alice)
    response = client.post(reverse("admin:inference_languagemodel_add"), form_data(first, name="Evil", slug="evil"))
    assert response.status_code == 302
    assert not LanguageModel.objects.filter(slug="evil").exists()


# --- adding and changing models ----------------------------------------------------------------
def test_adding_a_model_through_the_admin_form_creates_it(admin_client, first):
    data = form_data(
        LanguageModel(name="Hub model", slug="hub-model", source="hub", location="HuggingFaceTB/SmolLM2-360M-Instruct"),
        max_tokens=128,
        max_new_tokens_cap=1024,
    )
    response = admin_client.post(reverse("admin:inference_languagemodel_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else None
    created = LanguageModel.objects.get(slug="hub-model")
    assert created.source == "hub" and created.location == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert created.enabled and not created.is_default
    assert (created.max_tokens, created.max_new_tokens_cap) == (128, 1024)
    assert defaults() == ["first"]


@pytest.mark.parametrize("form", ["add", "change"])
def test_ticking_is_default_on_the_form_moves_the_default_to_that_model(admin_client, first, second, form):
    if form == "add":
        model = LanguageModel(name="New", slug="new", location="models/new")
        url = reverse("admin:inference_languagemodel_add")
    else:
        model = second
        url = reverse("admin:inference_languagemodel_change", args=[second.pk])
    response = admin_client.post(url, form_data(model, is_default=True))
    assert response.status_code == 302, str(response.context["errors"])
    assert defaults() == [model.slug]


def test_a_local_model_without_a_folder_is_refused(admin_client):
    data = form_data(LanguageModel(name="Nowhere", slug="nowhere", source="local", location=""))
    response = admin_client.post(reverse("admin:inference_languagemodel_add"), data)
    assert response.status_code == 200
    assert "location" in response.context["adminform"].form.errors
    assert not LanguageModel.objects.filter(slug="nowhere").exists()


def test_a_default_above_the_new_tokens_cap_is_refused(admin_client):
    data = form_data(LanguageModel(name="Odd", slug="odd", location="m"), max_tokens=600, max_new_tokens_cap=500)
    response = admin_client.post(reverse("admin:inference_languagemodel_add"), data)
    assert response.status_code == 200
    assert "max_tokens" in response.context["adminform"].form.errors
    assert not LanguageModel.objects.filter(slug="odd").exists()


# --- the default model -------------------------------------------------------------------------
def test_the_make_default_action_moves_the_default_to_the_selected_model(admin_client, first, second):
    response = run_action(admin_client, "make_default", second)
    assert response.status_code == 200
    assert "Second is now the default model." in messages_of(response)
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.is_default and not first.is_default
    assert defaults() == ["second"]


def test_the_make_default_action_wants_exactly_one_model(admin_client, first, second):
    response = run_action(admin_client, "make_default", first, second)
    assert any("exactly one" in m for m in messages_of(response))
    assert defaults() == ["first"]


def test_a_disabled_model_cannot_be_made_the_default(admin_client, first, second):
    second.enabled = False
    second.save()
    response = run_action(admin_client, "make_default", second)
    assert any("Enable the model" in m for m in messages_of(response))
    assert defaults() == ["first"]


def test_saving_a_model_as_default_clears_the_old_default(first, second):
    second.is_default = True
    second.save()
    first.refresh_from_db()
    assert not first.is_default
    assert defaults() == ["second"]

    third = LanguageModel.objects.create(name="Third", slug="third", location="/m3", is_default=True)
    assert defaults() == [third.slug]
    assert LanguageModel.default() == third


def test_saving_the_default_again_keeps_it_the_only_default(first, second):
    first.name = "First renamed"
    first.save()
    assert defaults() == ["first"]


def test_the_default_falls_back_to_the_first_enabled_model_when_none_is_marked():
    LanguageModel.objects.create(name="Beta", slug="beta", location="/b")
    LanguageModel.objects.create(name="Alpha", slug="alpha", location="/a", enabled=False)
    assert LanguageModel.default().slug == "beta"


# --- disabling ---------------------------------------------------------------------------------
def test_the_disable_action_refuses_the_default_model_with_a_message(admin_client, first, second):
    response = run_action(admin_client, "disable", first, second)
    assert any("default model cannot be disabled" in m for m in messages_of(response))
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.enabled and second.enabled


def test_the_disable_action_disables_other_models(admin_client, first, second):
    response = run_action(admin_client, "disable", second)
    assert "Disabled 1 model(s)." in messages_of(response)
    second.refresh_from_db()
    assert not second.enabled
    first.refresh_from_db()
    assert first.enabled


def test_unticking_enabled_on_the_default_models_change_form_is_refused(admin_client, first):
    url = reverse("admin:inference_languagemodel_change", args=[first.pk])
    response = admin_client.post(url, form_data(first, enabled=False))
    assert response.status_code == 200
    assert "must be enabled" in str(response.context["adminform"].form.errors)
    first.refresh_from_db()
    assert first.enabled and first.is_default


def test_unticking_enabled_on_the_default_in_the_list_is_refused(admin_client, first, second):
    data = {
        "form-TOTAL_FORMS": "2",
        "form-INITIAL_FORMS": "2",
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "form-0-id": str(first.pk),
        "form-1-id": str(second.pk),
        "form-1-enabled": "on",
        "_save": "Save",
    }
    response = admin_client.post(reverse("admin:inference_languagemodel_changelist"), data)
    assert response.status_code == 200
    assert "must be enabled" in str(response.context["cl"].formset.errors)
    first.refresh_from_db()
    assert first.enabled


# --- conversations and messages are read-only ---------------------------------------------------
@pytest.mark.parametrize("name", ["conversation", "message"])
def test_conversations_and_messages_cannot_be_added_in_the_admin(admin_client, alices_chat, name):
    count = Conversation.objects.count(), Message.objects.count()
    assert admin_client.get(reverse(f"admin:chat_{name}_add")).status_code == 403
    assert admin_client.post(reverse(f"admin:chat_{name}_add"), {"title": "x", "content": "x"}).status_code == 403
    assert (Conversation.objects.count(), Message.objects.count()) == count


def test_a_conversation_can_be_viewed_but_has_no_save_button(admin_client, alices_chat):
    response = admin_client.get(reverse("admin:chat_conversation_change", args=[alices_chat.pk]))
    assert response.status_code == 200
    assert b"Alice&#x27;s chat" in response.content and b"Hello admin" in response.content
    assert b'name="_save"' not in response.content
    assert b'name="_continue"' not in response.content


def test_posting_a_change_to_a_conversation_is_refused(admin_client, alices_chat):
    url = reverse("admin:chat_conversation_change", args=[alices_chat.pk])
    response = admin_client.post(url, {"title": "Changed by admin", "user": alices_chat.user_id})
    assert response.status_code == 403
    alices_chat.refresh_from_db()
    assert alices_chat.title == "Alice's chat"


def test_a_message_can_be_viewed_but_not_changed(admin_client, alices_chat):
    message = alices_chat.messages.get()
    url = reverse("admin:chat_message_change", args=[message.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    assert b"Hello admin" in response.content
    assert b'name="_save"' not in response.content
    response = admin_client.post(url, {"content": "Rewritten", "role": "user", "conversation": alices_chat.pk})
    assert response.status_code == 403
    message.refresh_from_db()
    assert message.content == "Hello admin"


def test_the_conversation_and_message_lists_open_for_a_superuser(admin_client, alices_chat):
    for name in ("conversation", "message"):
        response = admin_client.get(reverse(f"admin:chat_{name}_changelist"))
        assert response.status_code == 200
    assert b"Alice&#x27;s chat" in admin_client.get(reverse("admin:chat_conversation_changelist")).content


@pytest.mark.django_db
def test_a_local_model_outside_the_model_folders_is_refused(admin_client):
    first = LanguageModel.objects.first() or LanguageModel(name="x", slug="x", location="x")
    data = form_data(first, name="Escape", slug="escape", location="/etc", is_default=False)
    response = admin_client.post(reverse("admin:inference_languagemodel_add"), data)
    assert response.status_code == 200
    assert "must lie under MODEL_DIR" in str(response.context["adminform"].form.errors["location"])
    assert not LanguageModel.objects.filter(slug="escape").exists()
