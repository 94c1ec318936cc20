"""Prompt templates: checked when saved, filled in one pass on the server, stored with the message."""

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ValidationError

from chat.models import Message
from presets import templating
from presets.models import PromptTemplate

from .socket_client import connect, receive, send

TRANSLATE = "Translate into {{language}}:\n{{text}}"


# --- rendering -------------------------------------------------------------------------------
def test_values_are_inserted_as_plain_text_and_cannot_add_placeholders():
    filled = templating.render(TRANSLATE, {"language": "{{text}}", "text": "hello {{language}} }} {{"})
    assert filled == "Translate into {{text}}:\nhello {{language}} }} {{"


def test_a_value_with_html_is_kept_as_text_by_the_template():
    filled = templating.render(TRANSLATE, {"language": "French", "text": "<script>alert(1)</script>"})
    assert filled.endswith("<script>alert(1)</script>")


def test_a_missing_variable_is_refused_naming_it():
    with pytest.raises(templating.TemplateError, match="'language'") as info:
        templating.render(TRANSLATE, {"text": "hello"})
    assert info.value.variable == "language"


def test_an_empty_variable_counts_as_missing():
    with pytest.raises(templating.TemplateError, match="'text'"):
        templating.render(TRANSLATE, {"language": "French", "text": "   "})


def test_an_unknown_variable_is_refused_naming_it():
    with pytest.raises(templating.TemplateError, match="'tone'"):
        templating.render(TRANSLATE, {"language": "French", "text": "hi", "tone": "polite"})


def test_a_value_that_is_not_text_is_refused():
    with pytest.raises(templating.TemplateError, match="'text'"):
        templating.render(TRANSLATE, {"language": "French", "text": 3})


def test_an_overlong_value_is_refused_with_the_limit():
    with pytest.raises(templating.TemplateError, match=str(templating.MAX_VALUE_CHARS)):
        templating.render(TRANSLATE, {"language": "French", "text": "x" * (templating.MAX_VALUE_CHARS + 1)})


def test_spaces_inside_the_braces_are_allowed_and_a_name_used_twice_is_one_variable():
    assert templating.variables("{{ a }} and {{a}} then {{b_2}}") == ["a", "b_2"]
    assert templating.render("{{ a }}/{{a}}/{{b_2}}", {"a": "x", "b_2": "y"}) == "x/x/y"


@pytest.mark.parametrize(
    "text",
    ["Hello {{name}", "Hello {{Name}}", "Hello {{ 1st }}", "Hello }} {{name}}", "{{na-me}}", "no placeholders"],
)
def test_malformed_template_text_is_refused(text):
    with pytest.raises(templating.TemplateError):
        templating.check_text(text)


# --- the model ---------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_built_in_templates_exist_and_are_valid():
    builtins = {
        t.name: t for t in PromptTemplate.objects.filter(name__in=["summarize", "translate", "classify", "extract"])
    }
    assert set(builtins) == {"summarize", "translate", "classify", "extract"}
    assert builtins["translate"].variables == ["language", "text"]
    assert builtins["classify"].variables == ["labels", "text"]
    assert "Label:" in builtins["classify"].text
    assert builtins["extract"].variables == ["fields", "text"]
    assert "JSON" in builtins["extract"].text
    for template in builtins.values():
        template.full_clean()


@pytest.mark.django_db
def test_saving_a_template_with_a_bad_placeholder_fails_validation():
    template = PromptTemplate(name="bad", title="Bad", text="Hi {{ name")
    with pytest.raises(ValidationError) as info:
        template.full_clean()
    assert "text" in info.value.message_dict


@pytest.mark.django_db
def test_changing_a_templates_text_raises_its_version():
    template = PromptTemplate.objects.create(name="greet", title="Greet", text="Hello {{who}}")
    template.title = "Greeting"
    template.save()
    assert template.version == 1
    template.text = "Hello there, {{who}}"
    template.save()
    template.refresh_from_db()
    assert template.version == 2


# --- sending from a template -------------------------------------------------------------------
# Transactional tests flush the database (built-in rows too), so these make their own template.
@database_sync_to_async
def _translate_template() -> PromptTemplate:
    template, _ = PromptTemplate.objects.update_or_create(
        name="translate", defaults={"title": "Translate", "text": TRANSLATE, "enabled": True}
    )
    return template


@pytest.mark.django_db(transaction=True)
async def test_a_template_is_filled_on_the_server_and_stored_with_its_name_and_version(alice, tiny_model):
    template = await _translate_template()
    ws, _ = await connect(alice)
    values = {"language": "French {{text}}", "text": "<script>window.x=1</script> **hi** }}"}
    await send(
        ws, {"type": "chat.send", "template": {"id": template.pk, "values": values}, "params": {"max_tokens": 2}}
    )
    started = await receive(ws)
    assert started["type"] == "chat.started"
    expected = templating.render(template.text, values)
    assert started["user_content"] == expected
    assert started["template"] == {"name": "translate", "version": template.version}
    stored = await database_sync_to_async(Message.objects.get)(pk=started["user_message"])
    assert stored.content == expected
    assert "French {{text}}" in stored.content
    assert stored.params == {"template": {"name": "translate", "version": template.version}}
    assert "<script" not in stored.html and "&lt;script&gt;" in stored.html
    await send(ws, {"type": "chat.stop", "message": started["message"]})
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_missing_template_variable_is_refused_with_its_name_and_nothing_is_stored(alice, tiny_model):
    template = await _translate_template()
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "template": {"id": template.pk, "values": {"text": "hello"}}})
    frame = await receive(ws)
    assert frame["type"] == "chat.error" and frame["code"] == "template_error"
    assert "'language'" in frame["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_an_unknown_or_disabled_template_is_refused(alice, tiny_model):
    template = await _translate_template()
    template.enabled = False
    await database_sync_to_async(template.save)(update_fields=["enabled"])
    ws, _ = await connect(alice)
    for spec in (
        {"id": template.pk, "values": {"language": "Welsh", "text": "x"}},
        {"id": 99999, "values": {}},
        {"id": "1"},
        "summarize",
    ):
        await send(ws, {"type": "chat.send", "template": spec})
        frame = await receive(ws)
        assert frame["type"] == "chat.error" and frame["code"] == "template_error", frame
    await ws.disconnect()


@pytest.mark.django_db
def test_a_text_change_saved_with_update_fields_still_raises_the_version():
    template = PromptTemplate.objects.create(name="greet", title="Greet", text="Hello {{who}}")
    template.text = "Hi {{who}}"
    template.save(update_fields=["text"])
    template.refresh_from_db()
    assert template.version == 2


# --- the admin -------------------------------------------------------------------------------------
@pytest.fixture
def admin_client(django_user_model):
    from django.test import Client

    admin = django_user_model.objects.create_superuser("root", password="root-pass-123")
    client = Client()
    client.force_login(admin)
    return client


@pytest.mark.django_db
def test_the_admin_refuses_a_template_with_a_malformed_placeholder(admin_client):
    response = admin_client.post(
        "/admin/presets/prompttemplate/add/",
        {"name": "broken", "title": "Broken", "text": "Say {{ thing", "enabled": "on"},
    )
    assert response.status_code == 200
    assert "Malformed placeholder" in response.content.decode()
    assert not PromptTemplate.objects.filter(name="broken").exists()


@pytest.mark.django_db
def test_the_admin_refuses_a_preset_with_an_out_of_range_setting_using_the_sampling_rules(admin_client):
    from presets.models import Preset

    response = admin_client.post(
        "/admin/presets/preset/add/", {"name": "Hot", "system_prompt": "", "temperature": "3", "enabled": "on"}
    )
    assert response.status_code == 200
    assert "temperature must be from 0 to 2" in response.content.decode()
    assert not Preset.objects.exists()
    response = admin_client.post(
        "/admin/presets/preset/add/",
        {"name": "Warm", "system_prompt": "Be kind.", "temperature": "1.2", "enabled": "on"},
    )
    assert response.status_code == 302
    assert Preset.objects.get().settings() == {"temperature": 1.2}
