"""LanguageModel moved from chat to inference (chat 0002, inference 0001 in state only, inference
0002 renames the table and adds fields) without losing rows, ids or foreign keys. Runs on
SQLite and PostgreSQL (DATABASE_URL)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from inference.sampling import PACKAGED_DEFAULTS

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_THE_MOVE = [("chat", "0001_initial"), ("inference", None)]


def migrate(targets) -> MigrationExecutor:
    """Migrate to `targets` and return an executor whose loader reflects the new state."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def foreign_key_target(table: str, column: str) -> str:
    with connection.cursor() as cursor:
        relations = connection.introspection.get_relations(cursor, table)
    return relations[column][1]


@pytest.fixture
def back_before_the_move():
    """The schema as it was before the move; migrated forward again afterwards, whatever happens."""
    try:
        executor = migrate(BEFORE_THE_MOVE)
        yield executor.loader.project_state([("chat", "0001_initial")]).apps
    finally:
        migrate(latest())


def test_migrating_forward_keeps_the_models_rows_ids_and_foreign_keys(back_before_the_move, django_user_model):
    old_apps = back_before_the_move
    assert "chat_languagemodel" in connection.introspection.table_names()
    assert "inference_languagemodel" not in connection.introspection.table_names()

    OldModel = old_apps.get_model("chat", "LanguageModel")
    OldConversation = old_apps.get_model("chat", "Conversation")
    OldMessage = old_apps.get_model("chat", "Message")
    OldUser = old_apps.get_model("auth", "User")
    packaged = OldModel.objects.create(
        name="SmolLM2", slug="smollm2-135m-instruct", source="packaged", temperature=0.2, is_default=True
    )
    local = OldModel.objects.create(name="Mine", slug="mine", source="local", location="mine", temperature=0.2)
    user = OldUser.objects.create(username="alice")
    conversation = OldConversation.objects.create(user=user, title="Before", model=local)
    message = OldMessage.objects.create(conversation=conversation, role="assistant", content="hi", model=packaged)

    migrate(latest())

    tables = connection.introspection.table_names()
    assert "inference_languagemodel" in tables and "chat_languagemodel" not in tables
    assert foreign_key_target("chat_conversation", "model_id") == "inference_languagemodel"
    assert foreign_key_target("chat_message", "model_id") == "inference_languagemodel"

    from chat.models import Conversation, Message
    from inference.models import LanguageModel

    assert sorted(LanguageModel.objects.values_list("id", "slug")) == sorted(
        [(packaged.pk, "smollm2-135m-instruct"), (local.pk, "mine")]
    )
    assert Conversation.objects.get(pk=conversation.pk).model_id == local.pk
    assert Message.objects.get(pk=message.pk).model_id == packaged.pk
    assert Conversation.objects.get(pk=conversation.pk).model.slug == "mine"

    # The packaged row with the old settings got the new packaged defaults; others kept theirs.
    migrated = LanguageModel.objects.get(pk=packaged.pk)
    assert {name: getattr(migrated, name) for name in PACKAGED_DEFAULTS.to_dict()} == PACKAGED_DEFAULTS.to_dict()
    assert migrated.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert migrated.is_default
    untouched = LanguageModel.objects.get(pk=local.pk)
    assert untouched.temperature == 0.2 and untouched.gguf_file == "" and untouched.backend == "auto"

    # New rows continue after the kept ids (PostgreSQL's sequence moved with the table).
    assert LanguageModel.objects.create(name="New", slug="new", location="new").pk > max(packaged.pk, local.pk)
