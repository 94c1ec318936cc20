"""Celery tasks of the chat app: thin wrappers over plain functions that tests call directly."""

from celery import shared_task

from . import retention


@shared_task(name="chat.purge_logs")
def purge_logs() -> str:
    return str(retention.purge())
