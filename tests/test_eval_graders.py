"""Eval graders (evals/graders.py) and template placeholders (evals/placeholders.py): pure functions, no DB."""

from __future__ import annotations

import pytest
import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

from evals import graders, placeholders
from evals.graders import GraderError
from evals.placeholders import PlaceholderError

PAIRS = [
    ("the cat sat on the mat", "the cat is sitting on the mat"),
    ("a quick brown fox jumps over the lazy dog", "the quick brown fox jumped over the lazy dog"),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("completely different words here", "nothing in common at all"),
    ("short", "short"),
]


# --- metrics against their reference libraries ---------------------------------------------


@pytest.mark.parametrize(("output", "reference"), PAIRS)
def test_bleu_is_sacrebleu_sentence_bleu(output, reference):
    expected = sacrebleu.sentence_bleu(output, [reference]).score / 100
    assert graders.metric("bleu", output, reference) == pytest.approx(min(expected, 1.0), abs=1e-12)


def test_bleu_identical_sentences_score_one():
    assert graders.metric("bleu", "the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert graders.metric("bleu", "one two three four", "one two three four") == 1.0
    assert graders.metric("bleu", "", "") == 0.0


@pytest.mark.parametrize(("output", "reference"), PAIRS)
def test_gleu_is_nltk_sentence_gleu_on_whitespace_tokens(output, reference):
    expected = sentence_gleu([reference.split()], output.split())
    assert graders.metric("gleu", output, reference) == pytest.approx(expected, abs=1e-12)


def test_gleu_is_case_sensitive_and_keeps_punctuation():
    assert graders.metric("gleu", "Hello world", "Hello world") == 1.0
    assert graders.metric("gleu", "hello world", "Hello world.") < 1.0


@pytest.mark.parametrize("n", ["1", "2", "3", "4", "5", "l"])
@pytest.mark.parametrize(("output", "reference"), PAIRS)
def test_rouge_is_rouge_score_fmeasure(n, output, reference):
    rouge_type = "rougeL" if n == "l" else f"rouge{n}"
    scorer = rouge_scorer.RougeScorer([rouge_type], use_stemmer=False)
    expected = scorer.score(reference, output)[rouge_type].fmeasure
    assert graders.metric(f"rouge_{n}", output, reference) == pytest.approx(expected, abs=1e-12)


def test_rouge_l_known_value():
    # LCS of "the cat sat" and "the cat" is 2 tokens: precision 2/3, recall 1, F = 0.8.
    assert graders.metric("rouge_l", "the cat sat", "the cat") == pytest.approx(0.8)
    assert graders.metric("rouge_1", "the cat", "the cat") == 1.0


@pytest.mark.parametrize(("output", "reference"), [*PAIRS, ("abc", "abd"), ("", "")])
def test_fuzzy_match_is_rapidfuzz_ratio(output, reference):
    assert graders.metric("fuzzy_match", output, reference) == pytest.approx(fuzz.ratio(output, reference) / 100)


def test_fuzzy_match_known_value():
    # Indel distance 2 over 6 characters: 1 - 2/6.
    assert graders.metric("fuzzy_match", "abc", "abd") == pytest.approx(2 / 3)


def test_exact_match_uses_squad_normalisation():
    assert graders.metric("exact_match", "The Cat sat!", "cat   sat") == 1.0
    assert graders.metric("exact_match", "an apple, a pear", "Apple pear.") == 1.0
    assert graders.metric("exact_match", "theatre", "atre") == 0.0  # articles only as whole words
    assert graders.metric("exact_match", "cat sat", "cat sat down") == 0.0
    assert graders.metric("exact_match", "", "the") == 1.0  # both normalise to nothing


def test_f1_squad_token_f1():
    # "The cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]; common 2.
    # precision 2/2 = 1, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 4/5.
    assert graders.metric("f1", "The cat sat", "a cat sat down") == pytest.approx(0.8)
    # Common tokens counted with multiplicity: [cat, cat, cat] vs [cat, dog]: common 1,
    # precision 1/3, recall 1/2, F1 = 2 * 1/6 / (5/6) = 0.4.
    assert graders.metric("f1", "cat cat cat", "cat dog") == pytest.approx(0.4)
    assert graders.metric("f1", "cat sat", "Cat, sat.") == 1.0
    assert graders.metric("f1", "dog", "cat") == 0.0


def test_f1_empty_answers():
    assert graders.metric("f1", "", "") == 1.0
    assert graders.metric("f1", "the", "a!") == 1.0  # both normalise to nothing
    assert graders.metric("f1", "", "cat") == 0.0
    assert graders.metric("f1", "cat", "") == 0.0


@pytest.mark.parametrize("name", graders.SUPPORTED_METRICS)
def test_every_metric_is_in_unit_interval(name):
    for output, reference in [*PAIRS, ("", ""), ("x", ""), ("", "x")]:
        assert 0.0 <= graders.metric(name, output, reference) <= 1.0


@pytest.mark.parametrize("name", ["meteor", "cosine"])
def test_metric_refuses_meteor_and_cosine(name):
    with pytest.raises(GraderError, match="not supported by this server"):
        graders.metric(name, "a", "a")


def test_metric_refuses_unknown():
    with pytest.raises(GraderError, match="'rouge_9' is not one of bleu, gleu"):
        graders.metric("rouge_9", "a", "a")


# --- string_check ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "input_text", "reference", "expected"),
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("eq", "Paris ", "Paris", 0.0),
        ("ne", "Paris", "London", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("like", "Paris", "The capital is Paris.", 0.0),  # the reference must be inside the input
        ("ilike", "THE CAPITAL IS PARIS.", "paris", 1.0),
        ("ilike", "London", "paris", 0.0),
    ],
)
def test_string_check_operations(operation, input_text, reference, expected):
    assert graders.string_check(operation, input_text, reference) == expected
    grader = {
        "type": "string_check",
        "name": "check",
        "input": "{{sample.output_text}}",
        "reference": "{{item.ref}}",
        "operation": operation,
    }
    result = graders.grade(grader, {"ref": reference}, {"output_text": input_text})
    assert result == {
        "name": "check",
        "type": "string_check",
        "score": expected,
        "passed": expected == 1.0,
        "sample": None,
    }


# --- grade -------------------------------------------------------------------------------------


def _similarity(metric="fuzzy_match", threshold=0.5, **extra):
    return {
        "type": "text_similarity",
        "name": "similar",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": metric,
        "pass_threshold": threshold,
        **extra,
    }


def test_text_similarity_pass_threshold():
    item = {"answer": "abd"}
    sample = {"output_text": "abc"}  # fuzzy 2/3
    assert graders.grade(_similarity(threshold=0.6), item, sample)["passed"] is True
    assert graders.grade(_similarity(threshold=0.7), item, sample)["passed"] is False
    result = graders.grade(_similarity(threshold=2 / 3), item, sample)
    assert result["passed"] is True  # score >= threshold
    assert result["score"] == pytest.approx(2 / 3)
    assert result["type"] == "text_similarity"
    assert result["sample"] is None
    assert "error" not in result


def test_grade_renders_nested_item_fields():
    grader = _similarity("exact_match", 1.0, reference="{{item.context.title}}")
    result = graders.grade(grader, {"context": {"title": "The Answer"}}, {"output_text": "answer"})
    assert result["score"] == 1.0
    assert result["passed"] is True


def test_grade_missing_field_is_a_row_error_not_an_exception():
    result = graders.grade(_similarity(), {"answr": "x"}, {"output_text": "x"})
    assert result["score"] == 0.0
    assert result["passed"] is False
    assert result["error"] == "{{ item.answer }}: the item has no field 'answer' (it has: answr)"


# --- placeholders ------------------------------------------------------------------------------


def test_render_item_and_sample():
    item = {"question": "2+2?", "answer": "4"}
    template = "Q: {{item.question}} A: {{ item.answer }} / {{sample.output_text}}"
    assert placeholders.render(template, item=item, sample={"output_text": "four"}) == "Q: 2+2? A: 4 / four"
    assert placeholders.render("no placeholders {x}", item={}) == "no placeholders {x}"


def test_render_nested_paths_lists_and_non_strings():
    item = {
        "context": {"title": "Río", "meta": {"year": 2024}},
        "choices": ["a", "b"],
        "n": 3,
        "ok": True,
        "none": None,
        "score": 1.5,
    }
    assert placeholders.render("{{ item.context.title }}", item=item) == "Río"
    assert placeholders.render("{{item.context.meta.year}}", item=item) == "2024"
    assert placeholders.render("{{item.context.meta}}", item=item) == '{"year": 2024}'
    assert placeholders.render("{{item.context}}", item=item) == '{"title": "Río", "meta": {"year": 2024}}'
    assert placeholders.render("{{item.choices}}", item=item) == '["a", "b"]'
    assert placeholders.render("{{item.choices.1}}", item=item) == "b"
    assert placeholders.render("{{item.n}} {{item.ok}} {{item.none}} {{item.score}}", item=item) == "3 True None 1.5"


def test_render_missing_field_names_the_fields_there_are():
    item = {"question": "q", "answer": "a"}
    with pytest.raises(PlaceholderError) as info:
        placeholders.render("{{item.answr}}", item=item)
    assert str(info.value) == "{{item.answr}}: the item has no field 'answr' (it has: answer, question)"
    assert isinstance(info.value, ValueError)

    nested = {"context": {"title": "t", "body": "b"}}
    with pytest.raises(PlaceholderError, match=r"item\.context has no field 'titel' \(it has: body, title\)"):
        placeholders.render("{{ item.context.titel }}", item=nested)
    with pytest.raises(PlaceholderError, match="item.context.title is a string, not an object"):
        placeholders.render("{{item.context.title.x}}", item=nested)


def test_render_list_index_errors():
    item = {"choices": ["a"]}
    with pytest.raises(PlaceholderError, match="has 1 element"):
        placeholders.render("{{item.choices.3}}", item=item)
    with pytest.raises(PlaceholderError, match="0-based index"):
        placeholders.render("{{item.choices.first}}", item=item)


def test_render_sample_errors():
    with pytest.raises(PlaceholderError, match="there is no sample here"):
        placeholders.render("{{sample.output_text}}", item={})
    with pytest.raises(PlaceholderError, match="the sample has no field 'output_txt' \\(it has: output_text\\)"):
        placeholders.render("{{sample.output_txt}}", item={}, sample={"output_text": "x"})
    with pytest.raises(PlaceholderError, match="unknown namespace 'itme'"):
        placeholders.render("{{itme.answer}}", item={"answer": "a"})
    with pytest.raises(PlaceholderError, match="not a placeholder path"):
        placeholders.render("{{ }}", item={})


def test_names():
    template = "{{item.q}} {{ sample.output_text }} {{item.context.title}} {{ item.q }}"
    assert placeholders.names(template) == ["item.q", "sample.output_text", "item.context.title"]
    assert placeholders.names("plain") == []


def test_check():
    schema = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}}}
    placeholders.check("{{item.question}} {{sample.output_text}}", item_schema=schema, allow_sample=True)
    placeholders.check("{{item.anything.deep}}", item_schema=None, allow_sample=False)
    placeholders.check("{{item.answer.nested}}", item_schema=schema, allow_sample=False)  # top level only
    with pytest.raises(PlaceholderError, match="the item schema has no field 'answr' \\(it has: answer, question\\)"):
        placeholders.check("{{item.answr}}", item_schema=schema, allow_sample=True)
    with pytest.raises(PlaceholderError, match="can only be used in graders"):
        placeholders.check("{{sample.output_text}}", item_schema=schema, allow_sample=False)
    with pytest.raises(PlaceholderError, match="unknown namespace 'foo'"):
        placeholders.check("{{foo.bar}}", item_schema=None, allow_sample=True)
    open_schema = {**schema, "additionalProperties": True}
    placeholders.check("{{item.extra}}", item_schema=open_schema, allow_sample=True)


# --- validate / validate_all -------------------------------------------------------------------


def test_validate_returns_normalised_copy():
    grader = _similarity("rouge_l", 1, extra_key="dropped")
    assert graders.validate(grader) == {
        "type": "text_similarity",
        "name": "similar",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": "rouge_l",
        "pass_threshold": 1.0,
    }
    check = {
        "type": "string_check",
        "name": "c",
        "input": "{{sample.output_text}}",
        "reference": "x",
        "operation": "ilike",
    }
    assert graders.validate(check) == check


@pytest.mark.parametrize(
    ("grader", "message"),
    [
        ("nope", "testing_criteria[0]: a grader must be an object with a 'type', got a string"),
        ({"name": "x"}, "testing_criteria[0]: 'type' is required"),
        (
            _similarity(type="sentiment"),
            "testing_criteria[0]: type 'sentiment' is not one of string_check, text_similarity",
        ),
        (_similarity(type="label_model"), "grader type 'label_model' is not supported by this server"),
        (_similarity("rouge_9"), "testing_criteria[0]: evaluation_metric 'rouge_9' is not one of bleu, gleu, rouge_1"),
        (_similarity("meteor"), "evaluation_metric 'meteor' is not supported by this server"),
        (_similarity("cosine"), "evaluation_metric 'cosine' is not supported by this server"),
        (_similarity(pass_threshold=None), "'pass_threshold' is required for a text_similarity grader"),
        (_similarity(pass_threshold="0.5"), "'pass_threshold' must be a number from 0 to 1, got '0.5'"),
        (_similarity(pass_threshold=True), "'pass_threshold' must be a number"),
        (_similarity(pass_threshold=1.5), "'pass_threshold' must be from 0 to 1, got 1.5"),
        (_similarity(pass_threshold=float("nan")), "'pass_threshold' must be a number"),
        (_similarity(name="  "), "'name' must not be empty"),
        (_similarity(name=3), "'name' must be a string, got a number"),
        (_similarity(input=None), "'input' is required"),
        (_similarity(reference=["x"]), "'reference' must be a string, got a list"),
        (_similarity(reference="{{item.answer"), None),  # unclosed braces are plain text
        (
            _similarity(reference="{{ref.answer}}"),
            "testing_criteria[0].reference: {{ref.answer}}: unknown namespace 'ref'",
        ),
        (
            {"type": "string_check", "name": "c", "input": "a", "reference": "b", "operation": "contains"},
            "operation 'contains' is not one of eq, ne, like, ilike",
        ),
        ({"type": "string_check", "name": "c", "input": "a", "reference": "b"}, "'operation' is required"),
    ],
)
def test_validate_errors(grader, message):
    if message is None:
        graders.validate(grader)
        return
    with pytest.raises(GraderError) as info:
        graders.validate(grader)
    assert message in str(info.value)


def test_validate_missing_pass_threshold():
    grader = _similarity()
    del grader["pass_threshold"]
    with pytest.raises(GraderError, match="'pass_threshold' is required for a text_similarity grader"):
        graders.validate(grader)


def test_validate_checks_placeholders_against_item_schema():
    schema = {"type": "object", "properties": {"question": {}, "answer": {}}}
    graders.validate(_similarity(), item_schema=schema)
    with pytest.raises(GraderError) as info:
        graders.validate(_similarity(reference="{{item.answr}}"), item_schema=schema, where="testing_criteria[2]")
    assert str(info.value) == (
        "testing_criteria[2].reference: {{item.answr}}: the item schema has no field 'answr' (it has: answer, question)"
    )


def test_validate_all():
    first = _similarity(name="a")
    second = {
        "type": "string_check",
        "name": "b",
        "input": "{{sample.output_text}}",
        "reference": "x",
        "operation": "eq",
    }
    assert [g["name"] for g in graders.validate_all([first, second])] == ["a", "b"]

    with pytest.raises(GraderError, match="at least one grader"):
        graders.validate_all([])
    with pytest.raises(GraderError, match="must be a list"):
        graders.validate_all(first)
    with pytest.raises(GraderError) as info:
        graders.validate_all([first, second, _similarity(name="a")])
    assert str(info.value) == (
        "testing_criteria[2]: name 'a' is already used by testing_criteria[0]; grader names must be unique"
    )
    with pytest.raises(GraderError, match=r"^testing_criteria\[1\]: evaluation_metric 'rouge_9'"):
        graders.validate_all([first, _similarity("rouge_9", name="z")])
    with pytest.raises(GraderError, match=r"^testing_criteria\[1\]\.input: .*item schema has no field 'q'"):
        graders.validate_all(
            [first, _similarity(name="z", input="{{item.q}}")], item_schema={"properties": {"answer": {}}}
        )
