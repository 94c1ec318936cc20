"""/v1/files: uploads checked row by row like the upload page, lists the SDK pages through,
content, delete (refused while a job uses the file), owners only, the fine-tuning permission.

The error cases run through Django's test client; the official `openai` SDK runs against a live
stack (daphne, a real inference worker, Redis) at the end."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

GOOD = {"messages": [{"role": "user", "content": "Who keeps the light?"}, {"role": "assistant", "content": "Marta."}]}
PASSWORD = "api-files-pass-123"


def jsonl(*rows) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def grant(user) -> None:
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="finetune", content_type__app_label="finetuning"))


def bearer(user) -> dict:
    from api import keys

    _, key = keys.create(user)
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def api_settings(settings, tmp_path, tiny_model):
    settings.FINETUNE_DIR = tmp_path / "finetuning"
    settings.API_RATE_LIMIT = 0
    return settings


@pytest.fixture
def alice_key(alice, api_settings):
    grant(alice)
    return bearer(alice)


def upload(client, auth: dict, content: bytes, name: str = "rows.jsonl", purpose: str = "fine-tune"):
    return client.post("/v1/files", {"file": SimpleUploadedFile(name, content), "purpose": purpose}, **auth)


def streamed(response) -> bytes:
    """A streamed body read to the end as daphne reads it: asynchronously."""
    from asgiref.sync import async_to_sync

    async def read() -> bytes:
        return b"".join([part async for part in response.streaming_content])

    return async_to_sync(read)()


def error_of(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return response.json()["error"]


# --- through Django's test client ----------------------------------------------------------
@pytest.mark.django_db
def test_an_upload_is_checked_stored_and_answered_as_a_file_object(client, alice_key):
    from finetuning.models import Dataset

    response = upload(client, alice_key, jsonl(GOOD, GOOD, GOOD), name="facts.jsonl")
    assert response.status_code == 200, response.content
    body = response.json()
    dataset = Dataset.objects.get()
    assert body["id"] == f"file-{dataset.pk}" and body["object"] == "file"
    assert (body["filename"], body["purpose"], body["status"]) == ("facts.jsonl", "fine-tune", "processed")
    assert body["bytes"] == dataset.path.stat().st_size > 0 and dataset.rows == 3


@pytest.mark.django_db
def test_a_file_with_bad_rows_is_refused_naming_the_lines_and_nothing_is_kept(client, alice_key, api_settings):
    from finetuning.models import Dataset

    response = upload(client, alice_key, jsonl(GOOD, "{broken", GOOD, {"prompt": "x"}))
    error = error_of(response)
    assert response.status_code == 400 and error["param"] == "file" and error["code"] == "invalid_file"
    assert error["message"].startswith("2 of 4 rows cannot be used.")
    assert "line 2: invalid JSON" in error["message"] and "line 4:" in error["message"]
    assert not Dataset.objects.exists()
    assert not list((api_settings.FINETUNE_DIR / "staging").iterdir())  # the staged rows are discarded


@pytest.mark.django_db
def test_a_file_with_no_usable_row_says_why(client, alice_key):
    response = upload(client, alice_key, b"not json at all\n")
    assert response.status_code == 400 and "line 1" in error_of(response)["message"]
    response = upload(client, alice_key, b"a,b\n", name="rows.txt")
    assert response.status_code == 400 and "Unsupported file type '.txt'" in error_of(response)["message"]


@pytest.mark.django_db
def test_an_upload_over_the_limit_is_refused_with_413(client, alice_key, api_settings):
    from finetuning.models import Dataset

    api_settings.FINETUNE_MAX_UPLOAD_BYTES = 2048
    response = upload(client, alice_key, jsonl(*[GOOD] * 100))
    assert response.status_code == 413
    error = error_of(response)
    assert "larger than the 2.0 KB limit" in error["message"] and error["code"] == "file_too_large"
    response = upload(client, alice_key, jsonl(*[GOOD] * 2000))  # over the limit by its Content-Length alone
    assert response.status_code == 413 and error_of(response)["code"] == "file_too_large"
    assert not Dataset.objects.exists()


@pytest.mark.django_db
def test_a_purpose_other_than_fine_tune_or_evals_or_no_file_is_refused_naming_the_param(client, alice_key):
    response = upload(client, alice_key, jsonl(GOOD), purpose="assistants")
    assert response.status_code == 400 and error_of(response)["param"] == "purpose"
    response = client.post("/v1/files", {"purpose": "fine-tune"}, **alice_key)
    assert response.status_code == 400 and error_of(response)["param"] == "file"


@pytest.mark.django_db
def test_without_the_fine_tuning_permission_fine_tuning_files_are_out_of_reach(client, alice_key, bob, api_settings):
    from finetuning.models import Dataset

    file_id = upload(client, alice_key, jsonl(GOOD)).json()["id"]
    Dataset.objects.update(owner=bob)  # bob's own fine-tuning file, from before the permission was taken away
    auth = bearer(bob)
    response = upload(client, auth, jsonl(GOOD))
    assert response.status_code == 403
    error = error_of(response)
    assert error["type"] == "permission_error" and "Can upload datasets and run fine-tuning jobs" in error["message"]
    assert client.get("/v1/files", **auth).json()["data"] == []  # only evals files (docs/evals.md) are listed
    for response in (client.get(f"/v1/files/{file_id}", **auth), client.delete(f"/v1/files/{file_id}", **auth)):
        assert response.status_code == 404
    assert Dataset.objects.count() == 1


@pytest.mark.django_db
def test_another_users_file_answers_404_like_an_unknown_one(client, alice_key, bob):
    file_id = upload(client, alice_key, jsonl(GOOD)).json()["id"]
    grant(bob)
    auth = bearer(bob)
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content", "/v1/files/file-999999", "/v1/files/x"):
        response = client.get(path, **auth)
        assert response.status_code == 404 and error_of(response)["code"] == "file_not_found", path
    assert client.delete(f"/v1/files/{file_id}", **auth).status_code == 404
    assert client.get("/v1/files", **auth).json()["data"] == []
    assert client.get(f"/v1/files/{file_id}", **alice_key).status_code == 200


@pytest.mark.django_db
def test_the_list_pages_by_after_and_limit_newest_first(client, alice_key):
    ids = [upload(client, alice_key, jsonl(GOOD), name=f"f{i}.jsonl").json()["id"] for i in range(5)]
    first = client.get("/v1/files?limit=2", **alice_key).json()
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    assert first["last_id"] == ids[3]
    rest = client.get(f"/v1/files?limit=2&after={first['last_id']}", **alice_key).json()
    assert [f["id"] for f in rest["data"]] == [ids[2], ids[1]] and rest["has_more"] is True
    last = client.get(f"/v1/files?limit=2&after={ids[1]}", **alice_key).json()
    assert [f["id"] for f in last["data"]] == [ids[0]] and last["has_more"] is False
    ascending = client.get("/v1/files?order=asc", **alice_key).json()
    assert [f["id"] for f in ascending["data"]] == ids
    assert client.get("/v1/files?purpose=batch", **alice_key).json()["data"] == []
    for query, param in (("limit=0", "limit"), ("limit=x", "limit"), ("after=job-1", "after"), ("order=up", "order")):
        response = client.get(f"/v1/files?{query}", **alice_key)
        assert response.status_code == 400 and error_of(response)["param"] == param


@pytest.mark.django_db
def test_content_answers_the_stored_rows(client, alice_key):
    csv = (
        b'messages\n"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"", ""content"": ""hello""}]"\n'
    )
    file_id = upload(client, alice_key, csv, name="rows.csv").json()["id"]
    response = client.get(f"/v1/files/{file_id}/content", **alice_key)
    assert response.status_code == 200 and response["Content-Type"] == "application/jsonl"
    rows = [json.loads(line) for line in streamed(response).decode().splitlines()]
    assert rows == [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]


@pytest.mark.django_db
def test_delete_is_refused_while_an_unfinished_job_uses_the_file(client, alice, alice_key, tiny_model):
    from finetuning import jobs
    from finetuning.models import Dataset, Job

    file_id = upload(client, alice_key, jsonl(GOOD)).json()["id"]
    dataset = Dataset.objects.get()
    job = jobs.create(alice, name="", base_model=tiny_model, dataset=dataset, method="lora", asked={})
    response = client.delete(f"/v1/files/{file_id}", **alice_key)
    error = error_of(response)
    assert response.status_code == 409 and error["code"] == "file_in_use"
    assert f"ftjob-{job.pk} uses this file and has not finished" in error["message"]
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED)  # finished: kept for its lineage
    response = client.delete(f"/v1/files/{file_id}", **alice_key)
    assert response.status_code == 409 and "kept for their lineage" in error_of(response)["message"]
    assert Dataset.objects.filter(pk=dataset.pk).exists()


@pytest.mark.django_db
def test_delete_removes_the_row_and_its_stored_rows(client, alice_key):
    from finetuning.models import Dataset

    file_id = upload(client, alice_key, jsonl(GOOD)).json()["id"]
    path = Dataset.objects.get().path
    response = client.delete(f"/v1/files/{file_id}", **alice_key)
    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not Dataset.objects.exists() and not path.exists()
    assert client.get(f"/v1/files/{file_id}", **alice_key).status_code == 404


# --- the official SDK against a live stack -------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_dir):
    from tests.live_client import use_model
    from tests.stack import LiveStack

    with LiveStack(tmp_path_factory.mktemp("api-files-stack"), extra_env={"LOG_LEVEL": "WARNING"}) as live:
        use_model(live, "tiny", str(tiny_model_dir))
        yield live


def sdk_client(stack, username: str, *, allowed: bool = True):
    """An `openai.OpenAI` client with a new key of a new user of the stack."""
    import openai

    stack.create_user(username, PASSWORD)
    if allowed:
        stack.run_manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import Permission, User\n"
            f"User.objects.get(username={username!r}).user_permissions.add("
            "Permission.objects.get(codename='finetune', content_type__app_label='finetuning'))\n",
        )
    key = stack.run_manage("createapikey", username).strip().splitlines()[-1]
    return openai.OpenAI(base_url=stack.url + "v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.stack
@pytest.mark.timeout(600)
def test_the_sdk_uploads_lists_reads_and_deletes_files(stack, tmp_path):
    import openai

    client = sdk_client(stack, "sdk-files")
    path = tmp_path / "facts.jsonl"
    path.write_bytes(jsonl(GOOD, GOOD))
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.filename == "facts.jsonl"
    assert uploaded.status == "processed" and uploaded.bytes > 0
    ids = [uploaded.id] + [
        client.files.create(file=(f"more-{i}.jsonl", jsonl(GOOD)), purpose="fine-tune").id for i in range(4)
    ]

    # Auto-paging: pages of two until has_more is false, every file once, newest first.
    listed = [f.id for f in client.files.list(limit=2)]
    assert listed == ids[::-1]
    page = client.files.list(limit=2)
    assert page.has_more is True and len(page.data) == 2

    rows = [json.loads(line) for line in client.files.content(uploaded.id).text.splitlines()]
    assert rows == [GOOD, GOOD]
    assert client.files.retrieve(uploaded.id).filename == "facts.jsonl"

    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("bad.jsonl", jsonl(GOOD, "{oops", GOOD)), purpose="fine-tune")
    assert "1 of 3 rows cannot be used" in bad.value.message and "line 2" in bad.value.message
    assert bad.value.body["param"] == "file"
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("ok.jsonl", jsonl(GOOD)), purpose="batch")
    assert bad.value.body["param"] == "purpose"

    deleted = client.files.delete(ids[-1])
    assert deleted.deleted is True and deleted.id == ids[-1]
    assert [f.id for f in client.files.list()] == ids[-2::-1]

    other = sdk_client(stack, "sdk-files-other")
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(uploaded.id)
    assert list(other.files.list()) == []

    outsider = sdk_client(stack, "sdk-files-outsider", allowed=False)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        outsider.files.create(file=("ok.jsonl", jsonl(GOOD)), purpose="fine-tune")
    assert "Can upload datasets and run fine-tuning jobs" in denied.value.message
    items = outsider.files.create(file=("items.jsonl", jsonl({"item": {"q": "1"}})), purpose="evals")
    assert items.purpose == "evals" and [f.id for f in outsider.files.list()] == [items.id]
