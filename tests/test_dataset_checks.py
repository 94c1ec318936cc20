"""A corpus of bad dataset files: each gets a clear error (the whole file, or the row's line and
reason), never an exception; good files in each format and container are read the same way.
Also the upload page (size limit before memory, nothing half-saved, keep the good rows)."""

from __future__ import annotations

import gzip
import json
import time
import zipfile
from pathlib import Path

import pytest

from finetuning import datasets, encoding
from finetuning.datasets import DatasetError, parse_file

GOOD = {"messages": [{"role": "user", "content": "Who keeps the light?"}, {"role": "assistant", "content": "Marta."}]}


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def parse(path: Path, **kw):
    return parse_file(path, path.name, max_bytes=kw.pop("max_bytes", 10**8), **kw)


def reasons(parsed) -> dict[int, str]:
    return {e.line: e.reason for e in parsed.errors}


@pytest.mark.parametrize(
    "name, content, says",
    [
        ("empty.jsonl", "", "The file is empty"),
        ("blank.jsonl", " \n\r\n \n", "The file is empty"),
        ("data.txt", jsonl(GOOD), "Unsupported file type '.txt'"),
        ("binary.jsonl", b"\x00\x01\x02garbage", "binary file"),
        ("rows.jsonl", gzip.compress(b"x" * 1000), "gzip file"),
        ("table.csv", "instruction;output\n", "The file has no rows"),
        ("array.json", '{"rows": 3}', "must be a list of rows"),
        ("broken.json", '[{"prompt": "a", ', "not valid JSON"),
        ("none.jsonl", jsonl({"question": "a", "answer": "b"}), "No row has a known shape"),
        ("allbad.jsonl", jsonl("{oops", "[1, 2"), "No row can be read"),
    ],
)
def test_whole_file_problems_say_what_to_do(tmp_path, name, content, says):
    with pytest.raises(DatasetError) as error:
        parse(write(tmp_path, name, content))
    assert says in str(error.value)


def test_a_zip_bomb_named_jsonl_is_refused_from_its_first_bytes(tmp_path):
    path = tmp_path / "rows.jsonl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rows.jsonl", b"0" * 50_000_000)
    assert path.stat().st_size < 200_000
    started = time.monotonic()
    with pytest.raises(DatasetError, match="zip archive"):
        parse(path)
    assert time.monotonic() - started < 1  # never decompressed


def test_a_file_over_the_limit_is_refused_by_its_size(tmp_path):
    path = write(tmp_path, "big.jsonl", jsonl(*[GOOD] * 100))
    with pytest.raises(DatasetError, match=r"The file is .* KB; the limit is 1\.0 KB"):
        parse(path, max_bytes=1000)


def test_too_many_rows(tmp_path):
    with pytest.raises(DatasetError, match="more than 3 rows"):
        parse(write(tmp_path, "many.jsonl", jsonl(*[GOOD] * 5)), max_rows=3)


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    content = b"\xef\xbb\xbf" + jsonl(GOOD, GOOD).replace("\n", "\r\n\r\n").encode()
    parsed = parse(write(tmp_path, "windows.jsonl", content))
    assert parsed.format == "messages" and len(parsed.rows) == 2 and not parsed.errors
    assert parsed.lines == [1, 3]


def test_each_bad_row_gets_its_line_and_reason(tmp_path):
    huge_number = '{"messages": [{"role": "user", "content": "a"}], "n": ' + "9" * 5000 + "}"
    rows = [
        GOOD,  # 1
        "{not json",  # 2
        huge_number,  # 3
        '{"messages": NaN}',  # 4
        "[1, 2]",  # 5
        {"messages": [{"role": "bot", "content": "x"}]},  # 6
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},  # 7
        {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]},  # 8
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # 9
        {"messages": [{"role": "user", "content": "only a question"}]},  # 10
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},  # 11
        {"prompt": "p", "completion": "c"},  # 12
        GOOD,  # 13
    ]
    path = write(tmp_path, "rows.jsonl", jsonl(*rows))
    path.write_bytes(path.read_bytes() + b'{"messages": "\xff\xfe"}\n')  # 14: not UTF-8
    parsed = parse(path)
    got = reasons(parsed)
    assert parsed.lines == [1, 13] and parsed.total_rows == 14
    assert got[2].startswith("invalid JSON")
    assert "too many digits" in got[3]
    assert "NaN" in got[4]
    assert "must be an object" in got[5]
    assert "role 'bot'" in got[6]
    assert "the assistant's answer is empty" in got[7]
    assert "system message may only come first" in got[8]
    assert "'assistant' but 'user' was expected" in got[9]
    assert "last message must be the assistant's answer" in got[10]
    assert "'content' must be text, got a number" in got[11]
    assert "this row is prompt_completion but the file is messages" in got[12]
    assert "not valid UTF-8 (byte 0xff" in got[14]
    assert datasets.describe_errors(parsed.errors, limit=2).startswith("12 bad rows. line 2: invalid JSON")


def test_a_one_megabyte_line_is_refused_without_keeping_it(tmp_path):
    long_line = json.dumps({"prompt": "x" * 1_100_000, "completion": "y"})
    path = write(
        tmp_path, "long.jsonl", jsonl({"prompt": "a", "completion": "b"}, long_line, {"prompt": "c", "completion": "d"})
    )
    parsed = parse(path)
    assert [r[0]["content"] for r in parsed.rows] == ["a", "c"]
    assert "over the 1000000-byte limit" in reasons(parsed)[2]


@pytest.mark.parametrize(
    "name, content, first_user",
    [
        ("alpaca.jsonl", jsonl({"instruction": "Add", "input": "2 and 3", "output": "5"}), "Add\n\n2 and 3"),
        ("pc.jsonl", jsonl({"prompt": "Hi", "completion": "Hello"}), "Hi"),
        ("array.json", json.dumps([{"prompt": "Hi", "completion": "Hello"}]), "Hi"),
        ("rows.json", jsonl({"prompt": "Hi", "completion": "Hello"}), "Hi"),  # JSONL named .json
        ("table.csv", 'instruction,input,output\r\n"Write\na line",,"Done"\r\n', "Write\na line"),
        ("chat.csv", 'messages\n"' + json.dumps(GOOD["messages"]).replace('"', '""') + '"\n', "Who keeps the light?"),
    ],
)
def test_every_format_and_container_becomes_chat_messages(tmp_path, name, content, first_user):
    parsed = parse(write(tmp_path, name, content))
    assert parsed.rows[0][0] == {"role": "user", "content": first_user}
    assert parsed.rows[0][-1]["role"] == "assistant" and not parsed.errors


def test_bad_rows_of_a_json_array_are_named_by_item(tmp_path):
    parsed = parse(write(tmp_path, "a.json", json.dumps([{"prompt": "a", "completion": "b"}, {"prompt": "a"}])))
    assert [(e.where, e.reason) for e in parsed.errors] == [("item 2", "missing field 'completion'")]


# --- tokens ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from django.conf import settings
    from transformers import AutoTokenizer

    from inference.loading import install_packaged_model
    from tests.conftest import TEST_MODEL_DIR

    settings.MODEL_DIR = TEST_MODEL_DIR
    return AutoTokenizer.from_pretrained(install_packaged_model(TEST_MODEL_DIR))


def test_only_the_assistants_tokens_are_trained(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "Second answer."},
    ]
    ids, labels = encoding.encode_chat(messages, tokenizer)
    assert len(ids) == len(labels)
    trained = tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
    assert trained == "First answer.<|im_end|>\nSecond answer.<|im_end|>\n"
    assert "question" not in trained and "brief" not in trained


def test_token_statistics_and_rows_longer_than_the_context(tokenizer):
    rows = [GOOD["messages"], [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]]
    stats, errors = encoding.token_stats(rows, tokenizer, [1, 2], max_tokens=100)
    assert stats.rows == 1 and stats.turns == 2 and stats.min == stats.max == stats.total
    assert 0 < stats.trained_tokens < stats.total
    assert len(errors) == 1 and errors[0].line == 2 and "longer than the model's 100-token context" in errors[0].reason
    assert encoding.estimate_seconds(1000, 8, 200) == 40


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
