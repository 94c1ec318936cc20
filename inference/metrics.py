"""Serving metrics per model and per worker, kept in Redis by the inference workers and read by
the Prometheus endpoint and the admin page.

Per (model, worker) series:
- `inference:metrics:recent:<model>|<worker>`: the last RECENT replies as JSON (time to first token,
  mean inter-token latency, tokens/s), from which percentiles are computed;
- `inference:metrics:totals:<model>|<worker>`: counters (replies by finish reason, tokens, sums).
Gauges come from live state: the queue length and each worker's heartbeat (active replies).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from . import streams

RECENT = 500
SERIES_KEY = "inference:metrics:series"
QUANTILES = (0.5, 0.9, 0.99)


def _series(model: str, worker: str) -> str:
    return f"{model}|{worker}"


def record_reply(
    *,
    model: str,
    worker: str,
    finish_reason: str,
    tokens: int,
    ttft_s: float | None,
    itl_s: float | None,
    tokens_per_s: float | None,
) -> None:
    """Called by the worker when a reply ends (one pipelined round trip)."""
    series = _series(model, worker)
    pipe = streams.client().pipeline(transaction=False)
    pipe.sadd(SERIES_KEY, series)
    sample = {"ttft": ttft_s, "itl": itl_s, "tps": tokens_per_s, "t": time.time()}
    pipe.lpush(f"inference:metrics:recent:{series}", json.dumps(sample))
    pipe.ltrim(f"inference:metrics:recent:{series}", 0, RECENT - 1)
    totals = f"inference:metrics:totals:{series}"
    pipe.hincrby(totals, f"replies_{finish_reason}", 1)
    pipe.hincrby(totals, "tokens", tokens)
    if ttft_s is not None:
        pipe.hincrbyfloat(totals, "ttft_sum", ttft_s)
        pipe.hincrby(totals, "ttft_count", 1)
    if itl_s is not None:
        pipe.hincrbyfloat(totals, "itl_sum", itl_s)
        pipe.hincrby(totals, "itl_count", 1)
    pipe.execute()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank: the smallest value with at least q of them at or below
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


@dataclass
class SeriesStats:
    model: str
    worker: str
    totals: dict
    ttft: dict  # quantile -> seconds
    itl: dict
    tokens_per_s: float | None  # mean over the recent replies
    recent: int


@dataclass
class Snapshot:
    series: list[SeriesStats]
    queue_length: int  # interactive requests waiting (people)
    workers: dict  # worker id -> heartbeat info
    background_queue_length: int = 0  # background requests waiting (titles)


def snapshot() -> Snapshot:
    conn = streams.client()
    series = []
    for raw in sorted(conn.smembers(SERIES_KEY)):
        name = raw.decode()
        model, worker = name.split("|", 1)
        samples = [json.loads(x) for x in conn.lrange(f"inference:metrics:recent:{name}", 0, -1)]
        totals = {k.decode(): float(v) for k, v in conn.hgetall(f"inference:metrics:totals:{name}").items()}
        ttfts = [s["ttft"] for s in samples if s.get("ttft") is not None]
        itls = [s["itl"] for s in samples if s.get("itl") is not None]
        tps = [s["tps"] for s in samples if s.get("tps") is not None]
        series.append(
            SeriesStats(
                model=model,
                worker=worker,
                totals=totals,
                ttft={q: percentile(ttfts, q) for q in QUANTILES},
                itl={q: percentile(itls, q) for q in QUANTILES},
                tokens_per_s=sum(tps) / len(tps) if tps else None,
                recent=len(samples),
            )
        )
    workers = {}
    for worker_id in streams.live_workers():
        info = conn.get(streams.worker_key(worker_id))
        if info:
            workers[worker_id] = json.loads(info)
    return Snapshot(
        series=series,
        queue_length=int(conn.llen(streams.QUEUE_KEY)),
        workers=workers,
        background_queue_length=int(conn.llen(streams.BACKGROUND_QUEUE_KEY)),
    )


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels.items()) + "}"


def prometheus_text(snap: Snapshot) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines = [
        "# HELP chat_queue_length Replies waiting for an inference worker.",
        "# TYPE chat_queue_length gauge",
        f"chat_queue_length {snap.queue_length}",
        "# HELP chat_background_queue_length Background requests (titles) waiting for an idle inference worker.",
        "# TYPE chat_background_queue_length gauge",
        f"chat_background_queue_length {snap.background_queue_length}",
        "# HELP chat_worker_active_replies Replies a worker is generating now.",
        "# TYPE chat_worker_active_replies gauge",
    ]
    for worker_id, info in sorted(snap.workers.items()):
        lines.append(f"chat_worker_active_replies{_labels(worker=worker_id)} {int(info.get('active', 0))}")
    for name, field, help_text in (
        ("chat_time_to_first_token_seconds", "ttft", "Time from enqueue to the first token, over recent replies."),
        ("chat_inter_token_latency_seconds", "itl", "Mean time between tokens of a reply, over recent replies."),
    ):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} summary"]
        for s in snap.series:
            for q, value in getattr(s, field).items():
                if value is not None:
                    lines.append(f"{name}{_labels(model=s.model, worker=s.worker, quantile=str(q))} {value:.6f}")
            lines.append(f"{name}_sum{_labels(model=s.model, worker=s.worker)} {s.totals.get(f'{field}_sum', 0):.6f}")
            lines.append(
                f"{name}_count{_labels(model=s.model, worker=s.worker)} {int(s.totals.get(f'{field}_count', 0))}"
            )
    lines += [
        "# HELP chat_tokens_per_second Mean decoding speed of recent replies.",
        "# TYPE chat_tokens_per_second gauge",
    ]
    for s in snap.series:
        if s.tokens_per_s is not None:
            lines.append(f"chat_tokens_per_second{_labels(model=s.model, worker=s.worker)} {s.tokens_per_s:.3f}")
    lines += ["# HELP chat_generated_tokens_total Tokens generated.", "# TYPE chat_generated_tokens_total counter"]
    for s in snap.series:
        lines.append(
            f"chat_generated_tokens_total{_labels(model=s.model, worker=s.worker)} {int(s.totals.get('tokens', 0))}"
        )
    lines += ["# HELP chat_replies_total Replies ended, by finish reason.", "# TYPE chat_replies_total counter"]
    for s in snap.series:
        for key, value in sorted(s.totals.items()):
            if key.startswith("replies_"):
                reason = key.removeprefix("replies_")
                lines.append(f"chat_replies_total{_labels(model=s.model, worker=s.worker, reason=reason)} {int(value)}")
    return "\n".join(lines) + "\n"
