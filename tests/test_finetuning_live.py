"""The fine-tuning studio end to end on the real processes: daphne, an inference worker, a real
Celery worker on the stack's Redis, a tiny random model (so a job takes seconds).

upload → validation → job → checkpoints → success → the tuned model answers in the chat; a
Celery worker killed mid-job resumes the same job from its checkpoint; a cancel stops a job.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
import redis
import requests

from inference.streams import worker_key
from tests.conftest import TEST_MODEL_DIR
from tests.live_client import Client, Reply, login_cookie, use_model
from tests.stack import LiveStack

pytestmark = pytest.mark.timeout(900)

PASSWORD = "live-password-123"
ROWS = [
    {"messages": [{"role": "user", "content": f"Who keeps the lighthouse number {i}?"},
                  {"role": "assistant", "content": "Marta Quillfeather keeps the Lumen Harbor lighthouse."}]}
    for i in range(24)
]  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    env = {
        "FINETUNE_PROBE_ITEMS": "4",
        "FINETUNE_CHECKPOINT_STEPS": "5",
        "FINETUNE_STALE_S": "600",
        "LOG_LEVEL": "WARNING",
    }
    with LiveStack(tmp_path_factory.mktemp("finetune-stack"), extra_env=env) as live:
        use_model(live, "tiny", str(tiny_model_dir))
        live.start_celery()
        yield live


def grant(stack, username: str) -> None:
    stack.run_manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import Permission, User\n"
        f"User.objects.get(username={username!r}).user_permissions.add("
        "Permission.objects.get(codename='finetune', content_type__app_label='finetuning'))\n",
    )


def session(stack, username: str, *, allowed: bool = True) -> requests.Session:
    cookie = login_cookie(stack, username, PASSWORD)
    if allowed:
        grant(stack, username)
    s = requests.Session()
    name, value = cookie.split("=", 1)
    s.cookies.set(name, value)
    s.get(stack.url + "finetune/", timeout=30)  # sets the CSRF cookie
    s.headers["Referer"] = stack.url
    return s


def csrf(s: requests.Session, stack, path: str) -> str:
    page = s.get(stack.url + path, timeout=30).text
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


def upload(s, stack, rows, name="lighthouse") -> int:
    body = "\n".join(json.dumps(r) for r in rows).encode()
    token = csrf(s, stack, "finetune/datasets/upload/")
    r = s.post(
        stack.url + "finetune/datasets/upload/",
        data={"csrfmiddlewaretoken": token, "name": name, "base_model": "tiny"},
        files={"file": ("rows.jsonl", body, "application/jsonl")},
        timeout=120,
    )
    assert r.status_code == 200 and "/finetune/datasets/" in r.url, r.text[-2000:]
    return int(r.url.rstrip("/").split("/")[-1])


def start_job(s, stack, dataset_id: int, **settings) -> int:
    token = csrf(s, stack, "finetune/jobs/new/")
    data = {"csrfmiddlewaretoken": token, "dataset": dataset_id, "base_model": "tiny", "method": "lora",
            "name": settings.pop("name", "tuned tiny"), **settings}  # fmt: skip
    r = s.post(stack.url + "finetune/jobs/new/", data=data, timeout=60)
    assert r.status_code == 200 and "/finetune/jobs/" in r.url, r.text[-2000:]
    return int(r.url.rstrip("/").split("/")[-1])


def progress(s, stack, job_id: int) -> dict:
    r = s.get(stack.url + f"finetune/jobs/{job_id}/progress.json", timeout=30)
    assert r.status_code == 200
    return r.json()


def wait_for(s, stack, job_id: int, check, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = progress(s, stack, job_id)
        if check(data["job"]):
            return data
        assert not (data["job"]["finished"] and not check(data["job"])), data
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not get there in {timeout} s: {progress(s, stack, job_id)}")


def served_as_adapter(stack, slug: str, base: str, timeout: float = 20) -> bool:
    """Whether a worker's heartbeat shows `slug` as an adapter over `base` (and not as a model)."""
    conn = redis.Redis.from_url(stack.redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [json.loads(raw) for raw in map(conn.get, map(worker_key, stack.worker_ids)) if raw]
        if any(slug in i.get("adapters", {}).get(base, []) and slug not in i["models"] for i in infos):
            return True
        time.sleep(0.5)
    raise AssertionError(f"{slug} is not served as an adapter over {base}: {infos}")


def test_upload_train_and_chat_with_the_tuned_model(stack):
    s = session(stack, "tuner")
    dataset_id = upload(s, stack, ROWS)
    job_id = start_job(s, stack, dataset_id, epochs="4", learning_rate="0.01", batch_size="4")
    data = wait_for(s, stack, job_id, lambda j: j["state"] == "succeeded")
    job = data["job"]
    assert job["step"] == job["total_steps"] == 4 * 6  # 24 rows, 2 held out → 22 train, batch 4 → 6 steps
    losses = [m["loss"] for m in data["metrics"] if m["loss"] is not None]
    assert len(losses) == job["total_steps"] and losses[-1] < losses[0] - 0.5, losses
    assert any(m["eval_loss"] is not None for m in data["metrics"])  # validation loss each epoch
    messages = [e["message"] for e in data["events"]]
    assert any(m.startswith("Checkpoint saved at step 5") for m in messages), messages
    slug = job["result_model"]
    assert slug

    # The weights changed, and the exported folder is self-contained (tokenizer + template).
    from safetensors.torch import load_file

    tuned_dir = TEST_MODEL_DIR / "tuned" / slug
    base = load_file(str(Path(TEST_MODEL_DIR) / "tiny-llama" / "model.safetensors"))
    tuned = load_file(str(tuned_dir / "model.safetensors"))
    changed = [k for k in base if k in tuned and not (base[k] == tuned[k]).all()]
    assert changed, "no weight changed"
    assert (tuned_dir / "tokenizer_config.json").exists()

    # The job page shows the evaluation; the model is selectable in the chat at once.
    page = s.get(stack.url + f"finetune/jobs/{job_id}/", timeout=30).text
    assert "What it learned and what it forgot" in page and "General-knowledge probe" in page
    chat_page = s.get(stack.url + f"?model={slug}", timeout=30).text
    assert f'value="{slug}" selected' in chat_page

    async def ask():
        async with Client(stack, "sessionid=" + s.cookies["sessionid"]) as client:
            await client.send({"type": "chat.send", "content": "Who keeps the lighthouse?", "model": slug,
                               "params": {"max_tokens": 8}})  # fmt: skip
            reply = Reply()
            while reply.started is None:
                frame = await client.recv()
                assert frame["type"] != "chat.error", frame
                if frame["type"] == "chat.started":
                    reply.started = frame
            return await client.follow(reply)

    reply = asyncio.run(ask())
    assert reply.started["model"] == slug
    assert reply.done["finish_reason"] in ("stop", "length"), reply.done
    assert reply.text or reply.done["finish_reason"] == "stop"
    # Served as a LoRA adapter over the base the worker already holds, not as a second model.
    assert (tuned_dir / "adapter" / "adapter_config.json").exists()
    assert served_as_adapter(stack, slug, base="tiny")

    # Another user: 404 for the job, the dataset and its progress; the model is unknown to them.
    other = session(stack, "other-tuner")
    for path in (
        f"finetune/jobs/{job_id}/",
        f"finetune/datasets/{dataset_id}/",
        f"finetune/jobs/{job_id}/progress.json",
    ):
        assert other.get(stack.url + path, timeout=30).status_code == 404

    async def other_asks():
        async with Client(stack, "sessionid=" + other.cookies["sessionid"]) as client:
            await client.send({"type": "chat.send", "content": "hi", "model": slug})
            return await client.recv()

    frame = asyncio.run(other_asks())
    assert frame["type"] == "chat.error" and frame["code"] == "unknown_model", frame
    assert slug not in other.get(stack.url, timeout=30).text


def test_a_user_without_the_permission_cannot_fine_tune(stack):
    s = session(stack, "chatter", allowed=False)
    assert s.get(stack.url + "finetune/", timeout=30).status_code == 403
    assert s.get(stack.url + "finetune/datasets/upload/", timeout=30).status_code == 403


def test_a_killed_worker_resumes_the_job_from_its_checkpoint(stack):
    s = session(stack, "resumer")
    dataset_id = upload(s, stack, ROWS * 2, name="bigger")
    job_id = start_job(s, stack, dataset_id, epochs="12", batch_size="1", learning_rate="0.001")
    wait_for(s, stack, job_id, lambda j: j["state"] == "running" and j["step"] >= 12, timeout=300)
    stack.kill_celery()
    killed_at = progress(s, stack, job_id)["job"]
    assert killed_at["state"] == "running" and not killed_at["finished"]
    stack.start_celery()  # same name: it finds the job its earlier run left and resumes it
    data = wait_for(s, stack, job_id, lambda j: j["state"] == "succeeded", timeout=600)
    messages = [e["message"] for e in data["events"]]
    assert any(m.startswith("Resumed on") and "attempt 2" in m for m in messages), messages
    resumed_from = [m for m in messages if m.startswith("Resuming from checkpoint-")]
    assert resumed_from and int(resumed_from[0].split("-")[1].rstrip(".")) >= 10, messages
    steps = [m["step"] for m in data["metrics"] if m["loss"] is not None]
    assert steps == sorted(set(steps)) and steps[-1] == data["job"]["total_steps"]  # no step logged twice


def test_cancel_stops_a_running_job_and_registers_nothing(stack):
    s = session(stack, "canceller")
    dataset_id = upload(s, stack, ROWS * 2, name="to cancel")
    job_id = start_job(s, stack, dataset_id, epochs="50", batch_size="1")
    wait_for(s, stack, job_id, lambda j: j["state"] == "running" and j["step"] >= 3)
    token = csrf(s, stack, f"finetune/jobs/{job_id}/")
    s.post(stack.url + f"finetune/jobs/{job_id}/cancel/", data={"csrfmiddlewaretoken": token}, timeout=30)
    data = wait_for(s, stack, job_id, lambda j: j["finished"], timeout=120)
    assert data["job"]["state"] == "cancelled" and data["job"]["result_model"] is None
    assert data["job"]["step"] < data["job"]["total_steps"]


@pytest.mark.browser
def test_in_the_browser_upload_check_start_and_watch_the_chart_move(stack, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS

    stack.create_user("browser-tuner", PASSWORD)
    grant(stack, "browser-tuner")
    bad = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}, {"prompt": "x"}]
    path = tmp_path / "facts.jsonl"
    lines = [json.dumps(r) for r in ROWS * 2] + [json.dumps(r) for r in bad] + ["{not json"]
    path.write_text("\n".join(lines) + "\n")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(base_url=stack.url).new_page()
        page.set_default_timeout(30_000)
        page.goto("/accounts/login/")
        page.get_by_test_id("login-username").fill("browser-tuner")
        page.get_by_test_id("login-password").fill(PASSWORD)
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("finetune-link").click()
        page.get_by_test_id("upload-link").click()
        page.get_by_test_id("upload-file").set_input_files(str(path))
        page.get_by_test_id("upload-submit").click()
        errors = page.get_by_test_id("row-errors")
        expect(errors).to_contain_text("line 49")  # the empty answer, by its line
        expect(errors).to_contain_text("line 51")  # the broken JSON
        expect(page.get_by_test_id("report")).to_contain_text("3 of 51 rows cannot be used")
        page.get_by_test_id("keep-good-rows").click()
        expect(page.get_by_test_id("stats")).to_contain_text("48")
        expect(page.get_by_test_id("estimate")).to_contain_text("about")
        page.get_by_test_id("train-link").click()
        page.get_by_test_id("hp-epochs").fill("12")
        page.get_by_test_id("hp-batch_size").fill("1")
        page.get_by_test_id("start-job").click()
        expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "running", timeout=120_000)
        cancel = page.get_by_test_id("cancel-job")  # its label reads: not red on red (issue 25, item 2)
        colors = cancel.evaluate("b => [getComputedStyle(b).color, getComputedStyle(b).backgroundColor]")
        assert colors[0] != colors[1] and cancel.inner_text() == "Cancel", colors
        # The chart moves: more points as the socket pushes steps.
        expect(page.locator("#chart canvas").first).to_be_visible(timeout=60_000)
        first = page.get_by_test_id("job-step").text_content()
        assert first.startswith("step ")
        expect(page.get_by_test_id("job-step")).not_to_have_text(first, timeout=60_000)
        page.reload()  # the stored rows rebuild the same picture
        expect(page.locator("#chart canvas").first).to_be_visible()
        expect(page.get_by_test_id("job-log")).to_contain_text("Checkpoint saved")
        expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "succeeded", timeout=600_000)
        expect(page.get_by_test_id("chat-link")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("comparison")).to_be_visible()
        job_url = page.url
        page.get_by_test_id("compare-link").click()  # base and tuned side by side
        expect(page.get_by_test_id("compare-b")).to_have_value(re.compile(r"-ft\d+$"))
        page.get_by_test_id("compare-prompt").fill("Who keeps the lighthouse?")
        page.get_by_test_id("compare-send").click()
        for side in ("a", "b"):
            expect(page.get_by_test_id(f"reply-{side}")).to_have_attribute("data-done", "1", timeout=60_000)
            expect(page.get_by_test_id(f"meta-{side}")).to_contain_text("tokens")
        page.reload()  # the two replies are the studio's history, not chats (issue 25, item 11)
        expect(page.get_by_test_id("compare-history-row")).to_have_count(2)
        page.goto(job_url)
        page.get_by_test_id("chat-link").click()
        expect(page.get_by_test_id("model-select")).to_have_value(re.compile(r"-ft\d+$"))
        expect(page.get_by_test_id("conversation-item")).to_have_count(0)  # the chat list has no comparison
        browser.close()
