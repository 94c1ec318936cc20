"""The OpenAI-compatible chat API against a live server (daphne, an inference worker, Redis),
with the official `openai` SDK as the client, and raw SSE with curl: models, completions
streamed and not, errors in OpenAI's shape, limits, logs, moderation, disconnects."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import openai
import pytest
import requests

from tests.live_client import use_model
from tests.stack import LiveStack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    with LiveStack(tmp_path_factory.mktemp("api-stack"), extra_env={"LOG_LEVEL": "WARNING"}) as live:
        use_model(live, "tiny", str(tiny_model_dir))
        yield live


def new_key(stack, username: str) -> str:
    stack.create_user(username, "live-password-123")
    return stack.run_manage("createapikey", username).strip().splitlines()[-1]


def shell(stack, code: str) -> str:
    return stack.run_manage("shell", "-c", code)


@pytest.fixture(scope="module")
def key(stack):
    return new_key(stack, "developer")


@pytest.fixture(scope="module")
def client(stack, key):
    return openai.OpenAI(base_url=stack.url + "v1", api_key=key, max_retries=0, timeout=120)


def test_models_lists_what_the_key_s_user_may_use(stack, client):
    shell(
        stack,
        "from django.contrib.auth.models import User\nfrom inference.models import LanguageModel\n"
        "u = User.objects.create_user('someone-else')\n"
        "LanguageModel.objects.create(name='theirs', slug='theirs-ft1', source='local', location='x', owner=u)\n",
    )
    ids = [m.id for m in client.models.list()]
    assert "tiny" in ids and "theirs-ft1" not in ids
    assert client.models.retrieve("tiny").owned_by == "system"
    with pytest.raises(openai.NotFoundError) as error:
        client.models.retrieve("theirs-ft1")  # another user's model: as if it did not exist
    assert error.value.body["code"] == "model_not_found"


def test_a_completion_answers_with_usage_and_is_logged_as_an_api_conversation(stack, client):
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say something"}], max_tokens=8, temperature=0
    )
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    logged = shell(
        stack,
        "from chat.models import Message\n"
        "m = Message.objects.filter(conversation__source='api', role='assistant').latest('id')\n"
        "print('LOG', m.status, repr(m.content), m.completion_tokens)\n",
    )
    assert f"LOG complete {choice.message.content!r} {reply.usage.completion_tokens}" in logged


def test_streaming_gives_chunks_then_usage_and_the_same_text(stack, client):
    params = dict(model="tiny", messages=[{"role": "user", "content": "Count"}], max_tokens=12, temperature=0)
    whole = client.chat.completions.create(**params).choices[0].message.content
    chunks = list(client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole  # greedy: the same reply streamed and not
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_n_choices_with_a_seed_are_each_reproducible(stack, client):
    params = dict(
        model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=1.0, seed=7, n=2
    )
    first = client.chat.completions.create(**params)
    again = client.chat.completions.create(**params)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]


def test_raw_server_sent_events_with_curl(stack, key):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5, "stream": True}
    out = subprocess.run(
        ["curl", "-sN", stack.url + "v1/chat/completions", "-H", f"Authorization: Bearer {key}",
         "-H", "Content-Type: application/json", "-d", json.dumps(body)],  # fmt: skip
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    lines = [line for line in out.stdout.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines), out.stdout
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["object"] == "chat.completion.chunk" and first["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.parametrize(
    "params, status, param",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9}, 400, "temperature"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 99}, 400, "n"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            400,
            "tools",
        ),
    ],
    ids=["no-model", "unknown-model", "no-messages", "bad-role", "temperature", "too-many-choices", "tools"],
)
def test_bad_parameters_get_openai_shaped_errors_naming_the_param(stack, key, params, status, param):
    response = requests.post(
        stack.url + "v1/chat/completions", json=params, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


def test_keys_sizes_paths_and_methods_all_answer_json(stack, key):
    url = stack.url + "v1/"
    cases = [
        requests.get(url + "models", timeout=30),  # no key
        requests.get(url + "models", headers={"Authorization": "Bearer sk-wrong"}, timeout=30),
        requests.get(url + "nowhere", headers={"Authorization": f"Bearer {key}"}, timeout=30),
        requests.get(url + "chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30),
        requests.post(
            url + "chat/completions",
            data=b"{" + b" " * 3_000_000,
            timeout=30,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        ),  # fmt: skip
        requests.post(
            url + "chat/completions", data=b"{not json", timeout=30, headers={"Authorization": f"Bearer {key}"}
        ),
    ]
    assert [r.status_code for r in cases] == [401, 401, 404, 405, 413, 400]
    for response in cases:
        assert response.headers["Content-Type"].startswith("application/json"), response.text[:200]
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(stack):
    limited = new_key(stack, "limited")
    shell(
        stack, "from api.models import ApiKey\nApiKey.objects.filter(user__username='limited').update(rate_limit=2)\n"
    )
    client = openai.OpenAI(base_url=stack.url + "v1", api_key=limited, max_retries=0)
    client.models.list()
    client.models.list()
    with pytest.raises(openai.RateLimitError) as error:
        client.models.list()
    assert 1 <= int(error.value.response.headers["Retry-After"]) <= 60
    assert "Retry in" in error.value.body["message"]
    usage = shell(
        stack, "from api.models import ApiKey\nprint('USE', ApiKey.objects.get(user__username='limited').requests)\n"
    )
    assert "USE 2" in usage  # the refused request is not counted as a use


def test_a_revoked_key_stops_working(stack):
    revoked = new_key(stack, "revoker")
    client = openai.OpenAI(base_url=stack.url + "v1", api_key=revoked, max_retries=0)
    client.models.list()
    shell(
        stack,
        "from api.models import ApiKey\nfrom api import keys\nkeys.revoke(ApiKey.objects.get(user__username='revoker'))\n",
    )
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_moderation_applies_to_api_calls(stack, client):
    shell(
        stack,
        "from moderation.models import Rule\n"
        "Rule.objects.create(name='no forbidden', pattern='forbidden', applies_to='input', action='block', category='test')\n"
        "Rule.objects.create(name='any e', pattern='e', kind='regex', applies_to='output', action='block')\n",
    )
    time.sleep(2.5)  # MODERATION_RELOAD_S: the worker reloads its rules
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a FORBIDDEN thing"}])
    assert error.value.body["code"] == "content_policy_violation" and "(test)" in error.value.body["message"]
    reply = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Write"}], max_tokens=200, temperature=0
    )
    assert reply.choices[0].finish_reason == "content_filter" and "e" not in reply.choices[0].message.content
    shell(stack, "from moderation.models import Rule\nRule.objects.all().delete()\n")
    time.sleep(2.5)


def test_a_client_that_disconnects_stops_its_generation(stack, key):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Go on"}], "max_tokens": 4000, "stream": True}
    with requests.post(
        stack.url + "v1/chat/completions", json=body, stream=True, timeout=60,
        headers={"Authorization": f"Bearer {key}"},
    ) as response:  # fmt: skip
        lines = response.iter_lines()
        next(lines), next(lines)  # the role chunk and a first piece of text
    deadline = time.monotonic() + 60
    code = (
        "from chat.models import Message\n"
        "m = Message.objects.filter(conversation__source='api', role='assistant').latest('id')\n"
        "print('STATE', m.status, m.completion_tokens)\n"
    )
    state = ""
    while time.monotonic() < deadline:
        state = [line for line in shell(stack, code).splitlines() if line.startswith("STATE")][-1]
        if "stopped" in state:
            break
        time.sleep(1)
    assert state.startswith("STATE stopped"), state
    assert int(state.split()[-1]) < 4000
