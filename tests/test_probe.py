"""The general-knowledge probe (finetuning/probe.py), its data files and the example dataset."""

import json

import pytest

from finetuning import probe
from finetuning.probe import ProbeItem, ProbeResult

DATA = probe.DATA_DIR
EXAMPLE = DATA / "example_lighthouse.jsonl"
HELDOUT = DATA / "example_lighthouse_heldout.jsonl"


def item(*answers: str) -> ProbeItem:
    return ProbeItem(question="?", answers=list(answers))


# --- is_correct ----------------------------------------------------------------------------------


def test_a_number_matches_only_as_a_whole_number():
    four = item("4", "four")
    assert probe.is_correct("2 + 2 = 4", four)
    assert probe.is_correct("The answer is 4.", four)
    assert not probe.is_correct("The answer is 14.", four)
    assert not probe.is_correct("It is 44 or 4.5 or 40", four)


def test_a_number_word_does_not_match_inside_a_longer_number_word():
    four = item("4", "four")
    assert probe.is_correct("A dog has four legs.", four)
    assert not probe.is_correct("There are fourteen of them.", four)
    assert not probe.is_correct("It is twenty-four.", four)


def test_a_short_answer_must_be_a_whole_word_but_a_long_one_may_be_part_of_a_word():
    assert probe.is_correct("The symbol is Au.", item("au"))
    assert not probe.is_correct("It is the autumn.", item("au"))
    assert probe.is_correct("Humans breathe with their lungs.", item("lung"))


def test_matching_ignores_case_spacing_and_full_width_letters():
    assert probe.is_correct("THE CAPITAL IS PARIS", item("paris"))
    assert probe.is_correct("It is in New\n  York City.", item("new york"))
    assert probe.is_correct("ｐａｒｉｓ", item("paris"))  # full-width letters, NFKC-normalized
    assert probe.is_correct("Ｔｈｅ ａｎｓｗｅｒ ｉｓ ４", item("4"))


def test_any_accepted_answer_counts_and_an_empty_reply_is_wrong():
    grey = item("gray", "grey")
    assert probe.is_correct("It is grey.", grey)
    assert not probe.is_correct("", grey)
    assert not probe.is_correct("It is blue.", grey)


# --- data files ----------------------------------------------------------------------------------


def test_the_general_probe_has_300_distinct_well_formed_items():
    items = probe.load_items()
    assert len(items) == 300
    assert len({i.question for i in items}) == 300
    for i in items:
        assert i.question.strip() and i.answers
        assert all(a.strip() and a == a.lower() for a in i.answers), i


def test_load_items_returns_the_first_items_up_to_the_limit():
    assert [i.question for i in probe.load_items(limit=5)] == [i.question for i in probe.load_items()[:5]]
    assert len(probe.load_items(HELDOUT)) == 10


def test_every_data_file_is_json_lines():
    for path in DATA.glob("*.jsonl"):
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        assert rows, path


def test_the_example_dataset_has_60_user_then_assistant_rows():
    with EXAMPLE.open(encoding="utf-8") as f:
        rows = [json.loads(line)["messages"] for line in f if line.strip()]
    assert len(rows) == 60
    for messages in rows:
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)


def test_the_held_out_questions_are_not_in_the_example_dataset():
    with EXAMPLE.open(encoding="utf-8") as f:
        rows = [json.loads(line)["messages"] for line in f if line.strip()]
    asked = {messages[0]["content"] for messages in rows}
    taught = " ".join(messages[1]["content"] for messages in rows).lower()
    heldout = probe.load_items(HELDOUT)
    assert heldout and not asked & {i.question for i in heldout}
    for i in heldout:  # every held-out answer is a fact the dataset's replies teach
        assert any(a in taught for a in i.answers), i


# --- scoring -------------------------------------------------------------------------------------


def result(*correct: bool) -> ProbeResult:
    answers = [{"question": f"q{n}", "answer": "", "correct": c} for n, c in enumerate(correct)]
    right = sum(correct)
    return ProbeResult(correct=right, total=len(correct), share=right / len(correct), answers=answers)


def test_forgetting_counts_what_the_tuned_model_lost_and_gained():
    base = result(True, True, True, True, False)
    tuned = result(True, False, True, False, True)
    assert probe.forgetting(base, tuned) == {
        "base_share": 0.8,
        "tuned_share": 0.6,
        "lost": 2,
        "lost_share": 0.5,
        "gained": 1,
    }


def test_forgetting_with_a_base_model_that_knew_nothing_does_not_divide_by_zero():
    assert probe.forgetting(result(False, False), result(False, True))["lost_share"] == 0


def test_run_probe_on_the_tiny_model_returns_one_scored_answer_per_item(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    items = probe.load_items(limit=5)
    outcome = probe.run_probe(model, tokenizer, items, batch_size=2, max_new_tokens=4)
    assert outcome.total == 5 and len(outcome.answers) == 5
    assert 0 <= outcome.share <= 1 and outcome.correct == sum(a["correct"] for a in outcome.answers)
    assert [a["question"] for a in outcome.answers] == [i.question for i in items]
    assert all(isinstance(a["answer"], str) for a in outcome.answers)


@pytest.mark.slow
def test_batched_answers_of_the_default_model_match_one_at_a_time_answers(settings):
    """Left padding must not change what the model says: prompts of different lengths in one batch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inference.loading import install_packaged_model

    location = install_packaged_model(settings.MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    questions = [
        "What is the capital of France?",
        "Which ocean lies between Europe and North America?",
        "What is 2 + 3?",
    ]
    batched = probe.answer_all(model, tokenizer, questions, batch_size=3, max_new_tokens=12)
    alone = [probe.answer_all(model, tokenizer, [q], max_new_tokens=12)[0] for q in questions]
    assert batched == alone
    assert probe.is_correct(batched[0], ProbeItem(questions[0], ["paris"]))
