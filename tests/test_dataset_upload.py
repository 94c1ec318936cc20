"""The upload page: the size limit before memory, nothing half-saved, the bad rows reported
and the good ones kept only when asked, owners only. (The file checks themselves are in
tests/test_dataset_files.py.)"""

from __future__ import annotations

import json

import pytest

GOOD = {"messages": [{"role": "user", "content": "Who keeps the light?"}, {"role": "assistant", "content": "Marta."}]}


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


# --- the upload page -------------------------------------------------------------------------
@pytest.fixture
def tuner(client, alice, settings, tmp_path, tiny_model):
    from django.contrib.auth.models import Permission

    settings.FINETUNE_DIR = tmp_path / "finetuning"
    alice.user_permissions.add(Permission.objects.get(codename="finetune"))
    client.force_login(alice)
    return client


def upload(client, name: str, content: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/finetune/datasets/upload/", {"file": SimpleUploadedFile(name, content), "name": "facts", "base_model": "tiny"}
    )


@pytest.mark.django_db
def test_an_upload_over_the_limit_is_refused_and_nothing_is_stored(tuner, settings):
    from finetuning.models import Dataset

    settings.FINETUNE_MAX_UPLOAD_BYTES = 2048
    response = upload(tuner, "big.jsonl", jsonl(*[GOOD] * 100).encode())
    assert response.status_code == 413
    assert "larger than the 2.0 KB limit" in response.content.decode()
    assert not Dataset.objects.exists()


@pytest.mark.django_db
def test_bad_rows_are_reported_and_the_good_rows_kept_only_when_asked(tuner, bob, client, settings):
    from finetuning.models import Dataset

    response = upload(tuner, "rows.jsonl", jsonl(GOOD, "{broken", GOOD, {"prompt": "x"}).encode())
    page = response.content.decode()
    assert response.status_code == 422 and not Dataset.objects.exists()
    assert "2 of 4 rows cannot be used" in page and "line 2" in page and "line 4" in page
    token = response.context["analysis"].token
    # Another user cannot save alice's staged upload.
    from django.test import Client

    other = Client()
    from django.contrib.auth.models import Permission

    bob.user_permissions.add(Permission.objects.get(codename="finetune"))
    other.force_login(bob)
    other.post("/finetune/datasets/keep/", {"token": token, "action": "keep"})
    assert not Dataset.objects.exists()
    response = tuner.post("/finetune/datasets/keep/", {"token": token, "action": "keep", "name": "facts"})
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/finetune/datasets/{dataset.pk}/"
    assert (dataset.rows, dataset.dropped_rows, dataset.owner.username) == (2, 2, "alice")
    assert dataset.path.read_text().count("\n") == 2 and dataset.stats["rows"] == 2
    assert other.get(f"/finetune/datasets/{dataset.pk}/").status_code == 404
    assert tuner.get(f"/finetune/datasets/{dataset.pk}/").status_code == 200


@pytest.mark.django_db
def test_a_clean_file_is_saved_at_once_and_a_zip_is_refused_with_a_message(tuner):
    from finetuning.models import Dataset

    response = upload(tuner, "rows.jsonl", jsonl(GOOD, GOOD).encode())
    assert response.status_code == 302 and Dataset.objects.get().rows == 2
    response = upload(tuner, "bomb.jsonl", b"PK\x03\x04" + b"\x00" * 100)
    assert response.status_code == 400 and "zip archive" in response.content.decode()
    assert Dataset.objects.count() == 1


@pytest.mark.django_db
def test_without_the_permission_the_studio_says_how_to_get_it(client, bob):
    client.force_login(bob)
    response = client.get("/finetune/")
    assert response.status_code == 403 and "Can upload datasets and run fine-tuning jobs" in response.content.decode()


def test_a_huge_json_list_of_tiny_objects_stops_at_the_row_limit_without_holding_it(tmp_path, settings):
    """Issue 24, finding 4: `[{},{},...]` took about 24 bytes of Python objects per input byte
    (1.2 GB for 50 MB) inside daphne. The list is read one row at a time and the parse stops at
    the row limit."""
    import tracemalloc

    from finetuning import datasets

    path = tmp_path / "tiny.json"
    path.write_text("[" + ",".join(["{}"] * 2_000_000) + "]")  # 6 MB
    tracemalloc.start()
    with pytest.raises(datasets.DatasetError, match="more than 1000 rows"):
        datasets.parse_file(path, "tiny.json", max_bytes=50_000_000, max_rows=1000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 * 2**20  # the text (6 MB) and 1,000 rows, not 2,000,000 objects (about 140 MB)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"data": [' + ",".join(["{}"] * 2_000_000) + "]}")
    with pytest.raises(datasets.DatasetError, match="must be a list of rows"):
        datasets.parse_file(wrapped, "wrapped.json", max_bytes=50_000_000, max_rows=1000)


def test_one_analysis_per_account_at_a_time(tmp_path, alice, tiny_model):
    from finetuning import datasets, datastore
    from inference import streams

    path = tmp_path / "rows.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    streams.client().set(f"finetune:analysis:{alice.pk}", "1", ex=60)  # another upload of hers is being checked
    try:
        with pytest.raises(datasets.DatasetError, match="Another of your uploads is being checked") as busy:
            datastore.analyze(path, "rows.jsonl", tiny_model, alice.pk)
        assert busy.value.busy
    finally:
        streams.client().delete(f"finetune:analysis:{alice.pk}")
    assert datastore.analyze(path, "rows.jsonl", tiny_model, alice.pk).good_rows == 1
    assert not streams.client().exists(f"finetune:analysis:{alice.pk}")  # freed when done


def test_the_example_dataset_downloads_and_is_used_in_one_click(client, alice, tiny_model, settings, tmp_path):
    """Issue 25, item 4: the empty studio page pointed to a path in the repository."""
    from django.contrib.auth.models import Permission

    from finetuning.models import Dataset

    settings.FINETUNE_DIR = tmp_path / "finetuning"
    alice.user_permissions.add(Permission.objects.get(codename="finetune"))
    client.force_login(alice)
    page = client.get("/finetune/").content.decode()
    assert 'data-testid="use-example"' in page and "finetuning/data/" not in page
    download = client.get("/finetune/datasets/example.jsonl")
    assert download.status_code == 200 and download.content.count(b"\n") == 60
    response = client.post("/finetune/datasets/use-example/")
    dataset = Dataset.objects.get(owner=alice)
    assert response.status_code == 302 and response["Location"] == f"/finetune/datasets/{dataset.pk}/"
    assert dataset.rows == 60 and dataset.name == "Lighthouse example"
    page = client.get(response["Location"]).content.decode()
    assert "FINETUNE_" not in page and "a first guess" in page
