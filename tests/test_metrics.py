"""Serving metrics: recorded by the worker, read as Prometheus text and in the admin."""

import pytest

from inference import metrics, streams

from .socket_client import connect, receive, send, until_done


@pytest.fixture
def clean_metrics():
    conn = streams.client()
    for key in conn.scan_iter("inference:metrics:*"):
        conn.delete(key)


@pytest.mark.django_db(transaction=True)
async def test_a_served_reply_shows_up_in_the_prometheus_metrics(alice, worker, clean_metrics, client, settings):
    ws, _ = await connect(alice)
    await send(ws, {"type": "chat.send", "content": "hi", "params": {"max_tokens": 8}})
    started = await receive(ws)
    _, done = await until_done(ws, started["message"])
    await ws.disconnect()
    settings.METRICS_TOKEN = "s3cret-token"
    from asgiref.sync import sync_to_async

    response = await sync_to_async(client.get)("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert response.status_code == 200
    text = response.content.decode()
    labels = f'model="tiny",worker="{worker.worker_id}"'
    assert f"chat_time_to_first_token_seconds_count{{{labels}}} 1" in text
    assert f'chat_replies_total{{{labels},reason="{done["finish_reason"]}"}} 1' in text
    assert f"chat_generated_tokens_total{{{labels}}} {done['usage']['completion_tokens']}" in text
    assert f'chat_worker_active_replies{{worker="{worker.worker_id}"}}' in text
    assert "chat_queue_length 0" in text
    assert "chat_background_queue_length 0" in text


@pytest.mark.django_db
def test_metrics_are_refused_without_staff_login_or_token(client, alice, settings):
    settings.METRICS_TOKEN = "right"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    client.force_login(alice)
    assert client.get("/metrics").status_code == 401
    assert client.get("/admin/metrics/").status_code == 302


@pytest.mark.django_db
def test_the_admin_metrics_page_shows_percentiles_per_model_and_worker(admin_client, clean_metrics):
    for ttft in (0.1, 0.2, 0.3, 0.4):
        metrics.record_reply(
            model="m1", worker="w1", finish_reason="stop", tokens=10, ttft_s=ttft, itl_s=0.02, tokens_per_s=50.0
        )
    response = admin_client.get("/admin/metrics/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "m1" in page and "w1" in page
    assert "200 / 400 / 400" in page  # ttft p50 / p90 / p99 in ms
    assert "50.0" in page
    assert admin_client.get("/admin/").content.decode().count("Inference metrics") >= 1


def test_percentiles_pick_the_nearest_rank():
    assert metrics.percentile([3, 1, 2, 4, 5], 0.5) == 3
    assert metrics.percentile([], 0.9) is None
    assert metrics.percentile([1.0, 2.0], 0.99) == 2.0
