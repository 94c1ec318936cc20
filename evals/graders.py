"""Graders of the OpenAI-compatible evals API: ``string_check`` and ``text_similarity``.

Grader configs have the OpenAI shapes (``testing_criteria`` of ``POST /v1/evals``). ``input`` and
``reference`` are templates (see ``evals.placeholders``): ``{{sample.output_text}}`` is the model's
reply, ``{{item.<field>}}`` a field of the data row.

``string_check`` — ``{"type": "string_check", "name", "input", "reference", "operation"}``; score 1 or 0,
passed when the score is 1:

- ``eq``: input equals reference exactly;
- ``ne``: input differs from reference;
- ``like``: reference is contained in input (case-sensitive);
- ``ilike``: reference is contained in input, ignoring case.

``text_similarity`` — ``{"type": "text_similarity", "name", "input", "reference", "evaluation_metric",
"pass_threshold"}``; score in [0, 1], passed when score >= pass_threshold. ``input`` is the text graded
(usually the model's output), ``reference`` the expected text. Metrics and what computes them:

- ``bleu``: sentence BLEU from sacreBLEU, ``sacrebleu.sentence_bleu(input, [reference]).score / 100``
  (its defaults: 13a tokenisation, case-sensitive, exponential smoothing, effective order).
- ``gleu``: Google-BLEU from NLTK, ``nltk.translate.gleu_score.sentence_gleu([reference_tokens],
  input_tokens)``, where both texts are split into tokens on whitespace (case-sensitive, punctuation
  stays attached to words).
- ``rouge_1`` … ``rouge_5``, ``rouge_l``: F-measure of ROUGE-N / ROUGE-L from Google's ``rouge-score``
  package, ``RougeScorer(["rougeN" or "rougeL"], use_stemmer=False).score(reference, input).fmeasure``.
  Its tokenizer lowercases and keeps only ASCII letters and digits, so text in other scripts scores 0.
- ``fuzzy_match``: ``rapidfuzz.fuzz.ratio(input, reference) / 100`` (normalised Indel similarity
  of the two strings, character level).
- ``exact_match`` (extension): 1 when the two texts are equal after SQuAD normalisation (lowercase,
  ASCII punctuation removed, articles a/an/the removed, whitespace collapsed), else 0.
- ``f1`` (extension): SQuAD token F1 over the normalised tokens, the official SQuAD evaluation's
  definition (tokens in common counted with multiplicity); 1 when both texts normalise to nothing,
  0 when only one does.

``perplexity`` (extension) — ``{"type": "perplexity", "name", "reference", "pass_threshold"}``; the
score is the run's model's perplexity of the reference as the answer to the item's prompt (the
exponential of the mean negative log-likelihood of the reference's tokens after the prompt, in the
model's chat template: evals/perplexity.py), passed when it is at most ``pass_threshold`` (a number
of 1 or more). Lower is better. It needs a run whose model is known (``completions``); the runs
measure it (``sample["perplexity"][name]``) before they grade.

``cosine`` and ``meteor`` (in OpenAI's list) are refused: this server has no embedding model for
cosine, and METEOR needs the WordNet corpus, which is not installed. Other OpenAI grader types
(``label_model``, ``score_model``, ``python``, ``multi``) are refused as well.

Public API: `validate`, `validate_all`, `grade`, `metric`, `string_check`, `GraderError`, and the
constants `GRADER_TYPES`, `OPERATIONS`, `SUPPORTED_METRICS`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import cache
from typing import Any

from . import placeholders

__all__ = [
    "GRADER_TYPES",
    "OPERATIONS",
    "SUPPORTED_METRICS",
    "UNSUPPORTED_METRICS",
    "GraderError",
    "grade",
    "metric",
    "string_check",
    "validate",
    "validate_all",
]

#: Grader types this server runs (``perplexity`` is an extension).
GRADER_TYPES = ("string_check", "text_similarity", "perplexity")

#: OpenAI grader types that exist but are not run here.
_OTHER_OPENAI_TYPES = ("label_model", "score_model", "python", "multi")

#: ``string_check`` operations.
OPERATIONS = ("eq", "ne", "like", "ilike")

_ROUGE = {
    "rouge_1": "rouge1",
    "rouge_2": "rouge2",
    "rouge_3": "rouge3",
    "rouge_4": "rouge4",
    "rouge_5": "rouge5",
    "rouge_l": "rougeL",
}

#: ``text_similarity`` metrics this server computes (``exact_match`` and ``f1`` are extensions).
SUPPORTED_METRICS = ("bleu", "gleu", *_ROUGE, "fuzzy_match", "exact_match", "f1")

#: OpenAI metrics refused here, with the reason given to the user.
UNSUPPORTED_METRICS = {
    "cosine": "it needs an embedding model, which this server does not provide",
    "meteor": "it needs the WordNet corpus, which is not installed on this server",
}

_FIELDS = {
    "string_check": ("type", "name", "input", "reference", "operation"),
    "text_similarity": ("type", "name", "input", "reference", "evaluation_metric", "pass_threshold"),
    "perplexity": ("type", "name", "reference", "pass_threshold"),
}


def lower_is_better(grader: dict) -> bool:
    """Whether a smaller score is the better one (a perplexity)."""
    return grader.get("type") == "perplexity"


class GraderError(ValueError):
    """A grader config that cannot be used; the message says where and why."""


# ---------------------------------------------------------------------------------------------
# Metrics


def _bleu(output: str, reference: str) -> float:
    """Sentence BLEU by sacreBLEU, scaled from 0–100 to 0–1."""
    import sacrebleu

    return sacrebleu.sentence_bleu(output, [reference]).score / 100


def _gleu(output: str, reference: str) -> float:
    """Sentence GLEU by NLTK, on whitespace tokens."""
    from nltk.translate.gleu_score import sentence_gleu

    return sentence_gleu([reference.split()], output.split())


@cache
def _rouge_scorer(rouge_type: str):
    """One ``rouge_score.rouge_scorer.RougeScorer`` per ROUGE type, built on first use."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([rouge_type], use_stemmer=False)


def _rouge(rouge_type: str, output: str, reference: str) -> float:
    """ROUGE F-measure by Google's rouge-score (``score(target, prediction)``)."""
    return _rouge_scorer(rouge_type).score(reference, output)[rouge_type].fmeasure


def _fuzzy(output: str, reference: str) -> float:
    """RapidFuzz ``fuzz.ratio``, scaled from 0–100 to 0–1."""
    from rapidfuzz import fuzz

    return fuzz.ratio(output, reference) / 100


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def _squad_normalize(text: str) -> str:
    """SQuAD answer normalisation: lowercase, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _exact_match(output: str, reference: str) -> float:
    """SQuAD exact match: 1.0 when both texts normalise to the same string, else 0.0."""
    return float(_squad_normalize(output) == _squad_normalize(reference))


def _f1(output: str, reference: str) -> float:
    """SQuAD token F1 (official evaluation logic) between the normalised texts."""
    output_tokens = _squad_normalize(output).split()
    reference_tokens = _squad_normalize(reference).split()
    if not output_tokens or not reference_tokens:
        return float(output_tokens == reference_tokens)
    common = Counter(output_tokens) & Counter(reference_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(output_tokens)
    recall = same / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


_METRICS = {
    "bleu": _bleu,
    "gleu": _gleu,
    "fuzzy_match": _fuzzy,
    "exact_match": _exact_match,
    "f1": _f1,
}


def _metric_error(name: Any) -> str:
    if name in UNSUPPORTED_METRICS:
        return f"evaluation_metric '{name}' is not supported by this server: {UNSUPPORTED_METRICS[name]}; use one of {', '.join(SUPPORTED_METRICS)}"
    return f"evaluation_metric {name!r} is not one of {', '.join(SUPPORTED_METRICS)}"


def metric(name: str, output: str, reference: str) -> float:
    """Score *output* against *reference* with the text-similarity metric *name*, in [0, 1].

    See the module docstring for the library behind each metric. Raises GraderError for a metric
    this server does not compute (including ``cosine`` and ``meteor``).
    """
    if name in _ROUGE:
        score = _rouge(_ROUGE[name], output, reference)
    elif name in _METRICS:
        score = _METRICS[name](output, reference)
    else:
        raise GraderError(_metric_error(name))
    # sacreBLEU can return 100.00000000000004 for identical sentences.
    return min(1.0, max(0.0, float(score)))


def string_check(operation: str, input_text: str, reference: str) -> float:
    """1.0 when *input_text* passes the string_check *operation* against *reference*, else 0.0.

    ``eq`` equal, ``ne`` not equal, ``like`` reference contained in input, ``ilike`` the same
    ignoring case (``str.casefold``).
    """
    if operation == "eq":
        ok = input_text == reference
    elif operation == "ne":
        ok = input_text != reference
    elif operation == "like":
        ok = reference in input_text
    elif operation == "ilike":
        ok = reference.casefold() in input_text.casefold()
    else:
        raise GraderError(f"operation {operation!r} is not one of {', '.join(OPERATIONS)}")
    return float(ok)


# ---------------------------------------------------------------------------------------------
# Validation


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def validate(grader: dict, *, item_schema: dict | None = None, where: str = "testing_criteria[0]") -> dict:
    """Check one grader config and return a normalised copy holding only the known keys.

    Checks the type, that every required field is there with the right type, a non-empty name, the
    operation or evaluation_metric, pass_threshold (required for text_similarity: a number from 0 to
    1), and the placeholders of input and reference (``item`` fields against *item_schema* when it
    has ``properties``; ``sample`` is allowed). Raises GraderError, its message starting with *where*.
    """
    if not isinstance(grader, dict):
        raise GraderError(f"{where}: a grader must be an object with a 'type', got {_type_name(grader)}")
    kind = grader.get("type")
    if kind not in GRADER_TYPES:
        if kind is None:
            raise GraderError(f"{where}: 'type' is required (one of {', '.join(GRADER_TYPES)})")
        if kind in _OTHER_OPENAI_TYPES:
            raise GraderError(
                f"{where}: grader type '{kind}' is not supported by this server; use one of {', '.join(GRADER_TYPES)}"
            )
        raise GraderError(f"{where}: type {kind!r} is not one of {', '.join(GRADER_TYPES)}")

    for field in _FIELDS[kind][1:]:
        if field not in grader or grader[field] is None:
            raise GraderError(f"{where}: '{field}' is required for a {kind} grader")
    for field in ("name", "input", "reference", "operation", "evaluation_metric"):
        if field in _FIELDS[kind] and not isinstance(grader[field], str):
            raise GraderError(f"{where}: '{field}' must be a string, got {_type_name(grader[field])}")
    if not grader["name"].strip():
        raise GraderError(f"{where}: 'name' must not be empty")

    normalised = {field: grader[field] for field in _FIELDS[kind]}
    if kind == "string_check":
        if grader["operation"] not in OPERATIONS:
            raise GraderError(f"{where}: operation {grader['operation']!r} is not one of {', '.join(OPERATIONS)}")
    elif kind == "perplexity":
        threshold = grader["pass_threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold) \
                or threshold < 1:  # fmt: skip
            raise GraderError(f"{where}: 'pass_threshold' must be a perplexity of 1 or more (passed at or below "
                              f"it), got {threshold!r}")  # fmt: skip
        normalised["pass_threshold"] = float(threshold)
    else:
        if grader["evaluation_metric"] not in SUPPORTED_METRICS:
            raise GraderError(f"{where}: {_metric_error(grader['evaluation_metric'])}")
        threshold = grader["pass_threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
            raise GraderError(f"{where}: 'pass_threshold' must be a number from 0 to 1, got {threshold!r}")
        if not 0 <= threshold <= 1:
            raise GraderError(f"{where}: 'pass_threshold' must be from 0 to 1, got {threshold}")
        normalised["pass_threshold"] = float(threshold)

    for field in ("input", "reference"):
        if field not in normalised:
            continue
        try:
            placeholders.check(grader[field], item_schema=item_schema, allow_sample=True)
        except placeholders.PlaceholderError as exc:
            raise GraderError(f"{where}.{field}: {exc}") from None
    return normalised


def validate_all(graders: list, item_schema: dict | None = None) -> list[dict]:
    """Check a ``testing_criteria`` list: not empty, unique names, each grader valid (see `validate`).

    Returns the normalised graders in the same order; raises GraderError naming the first problem.
    """
    if not isinstance(graders, list):
        raise GraderError(f"testing_criteria must be a list of graders, got {_type_name(graders)}")
    if not graders:
        raise GraderError("testing_criteria must hold at least one grader")
    result: list[dict] = []
    first_use: dict[str, int] = {}
    for i, grader in enumerate(graders):
        where = f"testing_criteria[{i}]"
        normalised = validate(grader, item_schema=item_schema, where=where)
        name = normalised["name"]
        if name in first_use:
            raise GraderError(
                f"{where}: name '{name}' is already used by testing_criteria[{first_use[name]}]; "
                "grader names must be unique"
            )
        first_use[name] = i
        result.append(normalised)
    return result


# ---------------------------------------------------------------------------------------------
# Grading


def grade(grader: dict, item: dict, sample: dict) -> dict:
    """Grade one row: *item* is the data row, *sample* the model's answer (with ``output_text``).

    *grader* should have passed `validate`. Returns the OpenAI result shape
    ``{"name", "type", "score", "passed", "sample": None}``. When a placeholder cannot be rendered
    for this row (a field missing from this item), the score is 0, passed is False and an
    ``"error"`` key holds the message, so that one bad row does not stop a run.
    """
    kind = grader["type"]
    result: dict[str, Any] = {"name": grader["name"], "type": kind, "score": 0.0, "passed": False, "sample": None}
    if kind == "perplexity":
        measured = (sample.get("perplexity") or {}).get(grader["name"])
        if not isinstance(measured, int | float):
            result["error"] = measured or "the perplexity was not measured: it needs a run whose model answered"
            return result
        result["score"] = float(measured)
        result["passed"] = measured <= float(grader["pass_threshold"])
        return result
    try:
        input_text = placeholders.render(grader["input"], item=item, sample=sample)
        reference = placeholders.render(grader["reference"], item=item, sample=sample)
    except placeholders.PlaceholderError as exc:
        result["error"] = str(exc)
        return result
    if kind == "string_check":
        score = string_check(grader["operation"], input_text, reference)
        passed = score == 1.0
    elif kind == "text_similarity":
        score = metric(grader["evaluation_metric"], input_text, reference)
        passed = score >= float(grader["pass_threshold"])
    else:
        raise GraderError(f"grader type {kind!r} is not one of {', '.join(GRADER_TYPES)}")
    result["score"] = score
    result["passed"] = passed
    return result
