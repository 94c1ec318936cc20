"""Moderation rules: each action on input and output, matches split across deltas, Unicode
tricks, catastrophic and invalid patterns, and the review queue."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from moderation.checks import check_input, current_rules
from moderation.matching import RuleSet, masked, normalize
from moderation.models import Event, Rule
from moderation.streaming import OutputFilter

pytestmark = pytest.mark.django_db


def rule(pattern, action="mask", kind="keyword", applies_to="both", **extra) -> Rule:
    return Rule.objects.create(
        name=f"{action} {pattern}", pattern=pattern, kind=kind, applies_to=applies_to, action=action, **extra
    )


def stream(text: str, rules: RuleSet, pieces: int = 1) -> tuple[list[str], str, bool]:
    """Feed `text` to an output filter `pieces` characters at a time, the way the worker flushes;
    returns every shown prefix, the final text and whether a block ended it."""
    view = OutputFilter(rules)
    shown, prefixes = "", []
    for end in range(pieces, len(text) + pieces, pieces):
        visible, blocked = view.view(text[:end], min(end, len(text)), final=False)
        if blocked:
            return prefixes, visible, True
        assert visible.startswith(shown), (visible, shown)
        shown = visible
        prefixes.append(shown)
    final, blocked = view.view(text, len(text), final=True)
    assert final.startswith(shown)
    return prefixes, final, blocked


def test_input_block_flag_and_mask_each_do_their_action():
    rule("forbidden plan", action="block", category="violence")
    rule("gossip", action="flag")
    rule("secret", action="mask", replacement="[hidden]")
    blocked = check_input("Here is my Forbidden   Plan for today")
    assert blocked.block is not None and "violence" in blocked.refusal
    flagged = check_input("Some gossip about the neighbours")
    assert flagged.block is None and flagged.text == "Some gossip about the neighbours"
    assert [r["action"] for r in flagged.records] == ["flag"]
    hidden = check_input("my secret is 42, SECRET!")
    assert hidden.text == "my [hidden] is 42, [hidden]!"


def test_keywords_match_whole_words_only():
    rule("ass")
    rule("café")
    rules = current_rules()
    assert rules.find("a class of grass", "input") == []
    assert masked("Kick ass.", rules.find("Kick ass.", "input")) == "Kick [removed]."
    assert masked("un CAFÉ noir", rules.find("un CAFÉ noir", "input")) == "un [removed] noir"


@pytest.mark.parametrize(
    "trick",
    [
        "ＳＥＣＲＥＴ",
        "s\u200becret",
        "se\u00adcret",
        "ѕесrеt",
        "SeCrEt",
        "s\u200d\u200de\ufeffcret",
        "se\ufe0fcret",
        "secr\u034fet",
        "s\u0336e\u0336c\u0336r\u0336e\u0336t\u0336",
        "sec\u3164ret",
        "secrеt",
        "s\u0435cr\u0435t",
        "𝐬𝐞𝐜𝐫𝐞𝐭",
        "sécret",
    ],
    ids=[
        "full-width",
        "zero-width-space",
        "soft-hyphen",
        "cyrillic-lookalikes",
        "mixed-case",
        "joiners-and-bom",
        "variation-selector",
        "grapheme-joiner",
        "strikethrough",
        "hangul-filler",
        "one-cyrillic-e",
        "cyrillic-ie",
        "math-bold",
        "accent",
    ],
)
def test_unicode_tricks_do_not_hide_a_word(trick):  # issue 24, finding 2: the second line is new
    rule("secret")
    text = f"the {trick} code"
    # (a strikethrough's last overlay mark stays after the mask: invisible, and nothing to the rules)
    assert normalize(masked(text, current_rules().find(text, "output")))[0] == "the [removed] code"


def test_the_unicode_confusables_fold_look_alikes_and_masking_keeps_the_rest():
    rule("good")
    text = "a g\u0585\u0585d day, and ΑΒΓ stays"  # Armenian oh (օ), missing from the old hand-written table
    assert masked(text, current_rules().find(text, "output")) == "a [removed] day, and ΑΒΓ stays"
    assert normalize("I1l0O")[0] == "i1l0o"  # ASCII is only lowercased: digit patterns keep working


def test_rules_apply_only_where_they_are_meant_to():
    rule("apples", applies_to="input")
    rule("pears", applies_to="output")
    rules = current_rules()
    assert [m.text for m in rules.find("apples and pears", "input")] == ["apples"]
    assert [m.text for m in rules.find("apples and pears", "output")] == ["pears"]
    for row in Rule.objects.all():
        row.enabled = False
        row.save()  # as the admin does: saving a rule reloads the rules at once
    assert current_rules().find("apples and pears", "input") == []


@pytest.mark.parametrize("pieces", [1, 2, 3, 7])
def test_a_masked_word_never_shows_even_split_across_deltas(pieces):
    rule("lighthouse keeper", replacement="***")
    text = "Marta is the lighthouse   keeper of Saltglass, the LIGHTHOUSE keeper."
    prefixes, final, blocked = stream(text, current_rules(), pieces)
    assert not blocked
    assert final == "Marta is the *** of Saltglass, the ***."
    for prefix in prefixes:
        assert "lighthouse" not in prefix.lower() and "keeper" not in prefix.lower(), prefix


def test_a_keyword_at_the_end_waits_for_the_next_token():
    rule("bad")
    view = OutputFilter(current_rules())
    assert view.view("this is bad", 11, final=False)[0] == "this is "  # "bad" or "badge"?
    assert view.view("this is badge", 13, final=False)[0] == "this is bad"  # held: 2 characters
    assert view.view("this is badge.", 14, final=True) == ("this is badge.", False)


def test_an_output_block_ends_the_reply_before_the_match_and_is_recorded():
    rule("launch codes", action="block", category="security")
    rule("password", action="mask")
    prefixes, final, blocked = stream("Your password: hunter2. The launch codes are 1234.", current_rules(), 3)
    assert blocked and final == "Your [removed]: hunter2. The "
    assert all("launch" not in p for p in prefixes)


def test_regular_expressions_are_caught_within_the_stream_window(settings):
    settings.MODERATION_STREAM_WINDOW = 32
    rule(r"\b\d{3}-\d{2}-\d{4}\b", kind="regex", replacement="[ssn]")
    prefixes, final, _ = stream("My number is 123-45-6789, call me.", current_rules(), 2)
    assert final == "My number is [ssn], call me."
    assert all("123-45" not in p and "45-6789" not in p for p in prefixes)


def test_a_long_reply_is_filtered_in_linear_work_and_ends_as_one_view_of_it(monkeypatch):
    rule("lighthouse keeper", replacement="***")
    rule("gossip", action="flag")
    rule(r"\b\d{3}-\d{2}-\d{4}\b", kind="regex", replacement="[ssn]")
    rules = current_rules()
    sentence = "The LIGHTHOUSE  keeper of Saltglass (ﬁne café, 123-45-6789) told gossip. "
    text = (sentence * (20_000 // len(sentence) + 1))[:20_000]
    whole = OutputFilter(rules)
    expected = whole.view(text, len(text), final=True)  # the whole reply at once

    normalized = []

    def counting(chunk):
        normalized.append(len(chunk))
        return normalize(chunk)

    monkeypatch.setattr("moderation.streaming.normalize", counting)
    prefixes, final, blocked = stream(text, rules, pieces=5)
    assert (final, blocked) == expected and "***" in final and "[ssn]" in final
    for prefix in prefixes:
        assert "lighthouse" not in prefix.lower() and "keeper" not in prefix.lower()
    assert len(prefixes) == 4_000 and sum(normalized) < 30 * len(text), sum(normalized)  # not 4,000 x 10,000


def test_each_view_of_a_streaming_reply_is_the_one_a_fresh_filter_gives():
    rule("lighthouse keeper", replacement="***")
    rule("bad")
    rule("launch codes", action="block")
    rules = current_rules()
    text = "A badge, a BAD ｌｉｇｈｔｈｏｕｓｅ keeper; ﬁne e\u0301 s\u200bpace. " * 30 + "The launch codes are 1234."
    view = OutputFilter(rules)
    for end in range(3, len(text) + 3, 3):
        raw, cut = text[:end], min(end, len(text)) - end % 4  # a stop string's tail held back now and then
        assert view.view(raw, cut, final=False) == OutputFilter(rules).view(raw, cut, final=False), end
    whole = OutputFilter(rules)
    assert view.view(text, len(text), final=True) == whole.view(text, len(text), final=True)
    assert view.moderation == whole.moderation and view.moderation[-1]["action"] == "block"


def test_a_reply_cut_shorter_at_a_stop_string_is_viewed_again_whole():
    rule("bad")
    view = OutputFilter(current_rules())
    long = "this is bad news. " * 20 + "STOP and then bad"
    for end in range(4, len(long), 4):
        view.view(long[:end], end, final=False)
    short = long[: long.index("STOP")]
    assert view.view(short, len(short), final=True) == (masked(short, current_rules().find(short, "output")), False)
    assert len(view.moderation) == 20  # each match once, none from the text cut off


def test_a_catastrophic_pattern_matches_in_linear_time():
    rule("(a+)+$", kind="regex")
    text = "a" * 200_000 + "!"  # Python's re would backtrack for longer than the test's timeout
    assert current_rules().find(text, "input") == []


@pytest.mark.parametrize(
    "pattern, says",
    [
        ("(?<=a)b", "look-around"),
        ("(a)\\1", "back-references"),
        ("a*", "matches empty text"),
        ("(unclosed", "Not a valid regular expression"),
    ],
)
def test_a_bad_regular_expression_is_refused_when_saved(pattern, says):
    bad = Rule(name="bad", pattern=pattern, kind="regex", action="flag")
    with pytest.raises(ValidationError) as error:
        bad.full_clean()
    assert says in str(error.value)


def test_flags_and_blocks_wait_for_review_and_masks_are_only_logged(alice, admin_client):
    from moderation import events

    rule("gossip", action="flag")
    rule("secret", action="mask")
    outcome = check_input("gossip and a secret")
    created = events.record(outcome.records, source="chat", user=alice)
    assert sorted((e.action, e.status) for e in created) == [("flag", "pending"), ("mask", "logged")]
    page = admin_client.get("/admin/moderation/event/?status__exact=pending")
    assert page.status_code == 200 and b"gossip" in page.content
    response = admin_client.post(
        "/admin/moderation/event/",
        {"action": "dismiss", "_selected_action": [e.pk for e in created]},
        follow=True,
    )
    assert b"1 event(s) dismissed" in response.content
    assert Event.objects.filter(status="dismissed").count() == 1


def test_the_rule_form_shows_why_a_pattern_is_refused(admin_client):
    response = admin_client.post(
        "/admin/moderation/rule/add/",
        {
            "name": "x",
            "kind": "regex",
            "pattern": "(?=x)",
            "applies_to": "both",
            "action": "block",
            "replacement": "[removed]",
            "enabled": "on",
        },  # fmt: skip
    )
    assert response.status_code == 200 and b"look-around" in response.content
    assert not Rule.objects.exists()


def test_a_keyword_matches_whole_words_unless_longer_words_are_asked_for():
    """Issue 25, item 13."""
    strict = rule("banana", action="flag")
    text = "two bananas and a banana"
    assert [m.text for m in current_rules().find(text, "input")] == ["banana"]
    strict.delete()
    rule("banana", action="flag", word_forms=True)
    assert [m.text for m in current_rules().find(text, "input")] == ["banana", "banana"]  # "banana(s)" and "banana"


def test_the_review_queue_has_one_row_per_rule_and_text_with_its_count(alice):
    from moderation import events

    rule("spam", action="flag")
    outcome = check_input("spam " * 8)
    made = events.record(outcome.records, source="chat", user=alice)
    assert len(made) == 1 and made[0].count == 8 and Event.objects.get().count == 8
