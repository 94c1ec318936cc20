"""What the chat page shows and the socket checks about a message's length and the model in force:
the token estimate handed to the page (chat/limits.py), refusals that store nothing, and a
conversation whose model was disabled."""

import json
import re

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat import limits
from chat.models import Conversation, Message
from inference.models import LanguageModel

from .socket_client import connect, receive, send

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def small_model():
    return LanguageModel.objects.create(
        name="Small", slug="small", location="/models/small", max_input_tokens=256, system_prompt="Be brief."
    )


@pytest.fixture
def default_model():
    return LanguageModel.objects.create(name="Main", slug="main", location="/models/main", is_default=True)


def page_config(user, url="/") -> tuple[dict, str]:
    client = Client()
    client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    found = re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1)), html


def test_the_page_gets_the_ratio_and_each_models_input_limit_from_python(alice, small_model, default_model, settings):
    settings.CHAT_CHARS_PER_TOKEN = 3.5
    config, html = page_config(alice)
    assert config["charsPerToken"] == 3.5
    assert config["templateTokens"] == limits.TEMPLATE_TOKENS
    assert config["maxMessageChars"] == settings.CHAT_MAX_MESSAGE_CHARS
    assert config["inputLimits"]["small"] == {"maxInputTokens": 256, "systemTokens": limits.system_tokens("Be brief.")}
    assert "maxlength" not in html.split('id="composer-input"')[1].split(">")[0]  # nothing is cut silently


def test_the_estimate_rounds_up_and_counts_the_system_prompt_and_the_template(settings):
    settings.CHAT_CHARS_PER_TOKEN = 4.0
    assert limits.estimate_tokens("") == 0
    assert limits.estimate_tokens("abcde") == 2
    assert limits.prompt_tokens("abcd", "") == 1 + limits.TEMPLATE_TOKENS
    assert limits.prompt_tokens("abcd", "abcd") == 2 + 2 * limits.TEMPLATE_TOKENS
    assert limits.system_tokens("   ") == 0


def test_the_settings_panel_is_handed_the_values_in_force(alice, default_model):
    config, _ = page_config(alice)
    assert config["samplingDefaults"]["temperature"] is not None
    assert set(config["samplingDefaults"]) >= {"temperature", "top_p", "top_k", "min_p"}


async def test_a_message_over_the_models_input_limit_is_refused_before_anything_is_stored(alice, small_model):
    ws, _ = await connect(alice)
    content = "word " * 300  # 1500 characters: about 470 tokens against 256
    await send(ws, {"type": "chat.send", "content": content, "model": "small"})
    frame = await receive(ws)
    assert frame["type"] == "chat.error" and frame["code"] == "message_too_long"
    assert "accepts at most 256" in frame["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert await database_sync_to_async(Conversation.objects.count)() == 0
    await ws.disconnect()


async def test_a_long_system_prompt_counts_against_the_limit_too(alice, small_model):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "Hi", "model": "small", "system_prompt": "x" * 1000})
    frame = await receive(ws)
    assert frame["code"] == "message_too_long" and "with the system prompt" in frame["message"]
    await ws.disconnect()


@database_sync_to_async
def conversation_with_disabled_model(user, model, default) -> Conversation:
    conversation = Conversation.objects.create(user=user, title="Old", model=model)
    model.enabled = False
    model.save(update_fields=["enabled"])
    return conversation


async def test_a_conversation_whose_model_was_disabled_is_not_switched_silently(alice, small_model, default_model):
    conversation = await conversation_with_disabled_model(alice, small_model, default_model)
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "conversation": conversation.pk, "content": "Hello"})
    frame = await receive(ws)
    assert frame["type"] == "chat.error" and frame["code"] == "model_disabled"
    assert "'small'" in frame["message"] and "'main'" in frame["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0

    # Choosing the default explicitly (the page's "Use Main") sends the message with it.
    await send(ws, {"type": "chat.send", "conversation": conversation.pk, "content": "Hello", "model": "main"})
    started = await receive(ws)
    assert started["type"] == "chat.started" and started["model"] == "main"
    await ws.disconnect()


def test_the_page_of_a_conversation_whose_model_was_disabled_says_so_and_offers_the_default(
    alice, small_model, default_model
):
    conversation = Conversation.objects.create(user=alice, title="Old", model=small_model)
    small_model.enabled = False
    small_model.save(update_fields=["enabled"])
    config, html = page_config(alice, conversation.get_absolute_url())
    assert config["disabledModel"] == {"slug": "small", "name": "Small"}
    assert "was disabled by an administrator" in html and 'data-testid="use-default-model"' in html
    assert re.search(r'<option value="main" selected>', html)


def test_a_conversation_with_an_enabled_model_shows_no_notice(alice, small_model, default_model):
    conversation = Conversation.objects.create(user=alice, title="Fine", model=small_model)
    config, html = page_config(alice, conversation.get_absolute_url())
    assert config["disabledModel"] is None and 'data-testid="model-notice"' not in html


async def test_a_message_the_estimate_lets_through_is_counted_exactly_near_the_limit(alice, tiny_model):
    """Issue 25, item 6: a message estimated under the limit (by characters) but over it in the
    model's real tokens created a conversation and an error reply. Near the limit the socket counts
    with the model's own tokenizer, and the refusal stores nothing."""
    content = "€ " * 600  # 1,200 characters: about 437 tokens by the estimate, against 512
    assert limits.prompt_tokens(content, "") < tiny_model.max_input_tokens
    exact = await database_sync_to_async(limits.exact_prompt_tokens)(content, "", tiny_model)
    assert exact > tiny_model.max_input_tokens
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": content, "model": "tiny"})
    frame = await receive(ws)
    assert frame["type"] == "chat.error" and frame["code"] == "message_too_long", frame
    assert f"The message is {exact} tokens" in frame["message"]
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert await database_sync_to_async(Conversation.objects.count)() == 0
    await ws.disconnect()
