"""The job socket: pushes a job's new progress rows to its page while it runs.

Reads the database (the rows are the truth) once a second and sends what is new; closes when
the job has finished and everything was sent. Owner (or staff) only; origin checked by the
ASGI router like the chat socket; closed with 4401 once the user's session ends
(chatsite/socket_sessions.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from chatsite import socket_sessions

from . import progress
from .models import Job

POLL_S = 1.0


class JobProgressConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        self.job_id = await database_sync_to_async(_visible_job)(user, job_id)
        await self.accept()
        if self.job_id is None:
            await self.close(code=4404 if user is not None and user.is_authenticated else 4401)
            return
        self.task = asyncio.create_task(self.push())

    async def disconnect(self, code) -> None:
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def receive_json(self, content, **kwargs) -> None:
        return  # nothing to receive: the page only listens

    async def push(self) -> None:
        after_metric = after_event = 0
        checked = time.monotonic()
        while True:
            if time.monotonic() - checked >= settings.SOCKET_SESSION_RECHECK_S:
                checked = time.monotonic()
                if not await database_sync_to_async(socket_sessions.session_valid)(self.scope):
                    await self.close(code=4401)  # logged out, password changed or deactivated since
                    return
            data = await database_sync_to_async(_snapshot)(self.job_id, after_metric, after_event)
            if data is None:
                await self.close(code=4404)
                return
            if data["metrics"]:
                after_metric = data["metrics"][-1]["id"]
            if data["events"]:
                after_event = data["events"][-1]["id"]
            await self.send_json(data)
            if data["job"]["finished"] and len(data["metrics"]) < progress.MAX_ROWS:
                await self.close(code=1000)
                return
            await asyncio.sleep(POLL_S)


def _visible_job(user, job_id) -> int | None:
    from django.db import close_old_connections

    close_old_connections()
    if user is None or not user.is_authenticated:
        return None
    from .views import may_finetune

    if not may_finetune(user):
        return None
    return Job.objects.owned_by(user).filter(pk=job_id).values_list("pk", flat=True).first()


def _snapshot(job_id: int, after_metric: int, after_event: int) -> dict | None:
    job = Job.objects.select_related("result_model").filter(pk=job_id).first()
    return None if job is None else progress.snapshot(job, after_metric, after_event)
