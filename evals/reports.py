"""What the studio's Evaluations pages show of runs (evals/views.py): a run's summary (its counts
from evals/runs.py `counts`, with pass rates), its items as table rows and as CSV or JSONL
exports, and two runs of an eval side by side: each answer's word-level difference and, per
grader, how often one run scored higher than the other."""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from dataclasses import dataclass, field

from django.db.models import Count

from . import graders, runs
from .models import OutputItem, Run

STATUSES = ("pass", "fail", "error")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may read as a formula


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def percent(share: float | None) -> str:
    """ "42%" (rounded half up, as the page's script does), "–" when there is nothing to count."""
    return "–" if share is None else f"{int(share * 100 + 0.5)}%"


# --- one run -------------------------------------------------------------------------------------
def summary(run: Run) -> dict:
    """The run's status, progress and results, as the status endpoint answers and the pages show."""
    counts = runs.counts(run)
    results = counts["result_counts"]
    criteria = [
        {
            "name": c["testing_criteria"],
            "passed": c["passed"],
            "failed": c["failed"],
            "pass_rate": rate(c["passed"], c["passed"] + c["failed"]),
            "pass_rate_text": percent(rate(c["passed"], c["passed"] + c["failed"])),
        }
        for c in counts["per_testing_criteria_results"]
    ]
    return {
        "id": run.pk,
        "status": run.status,
        "status_label": run.get_status_display(),
        "finished": run.is_finished,
        "cancel_requested": run.cancel_requested,
        "error": run.error_message,
        "progress": counts["progress"],
        "result_counts": results,
        "pass_rate": rate(results["passed"], results["total"]),
        "pass_rate_text": percent(rate(results["passed"], results["total"])),
        "criteria": criteria,
    }


def last_results(run_ids: list[int]) -> dict[int, dict]:
    """{run id: {"total", "passed", "pass_rate"}} over graded items, in one query (the list page)."""
    found: dict[int, dict] = {pk: {"total": 0, "passed": 0} for pk in run_ids}
    rows = (
        OutputItem.objects.filter(run_id__in=run_ids, state=OutputItem.State.GRADED)
        .values("run_id", "status")
        .annotate(n=Count("pk"))
    )
    for row in rows:
        found[row["run_id"]]["total"] += row["n"]
        if row["status"] == "pass":
            found[row["run_id"]]["passed"] += row["n"]
    for result in found.values():
        result["pass_rate"] = rate(result["passed"], result["total"])
        result["pass_rate_text"] = percent(result["pass_rate"])
    return found


def item_status(item: OutputItem) -> str:
    """pass, fail or error once graded; else where the item is (waiting, answered, skipped...)."""
    return item.status or item.state


def answered(item: OutputItem) -> bool:
    return item.state in (OutputItem.State.ANSWERED, OutputItem.State.GRADED)


@dataclass
class ItemRow:
    index: int
    fields: list[tuple[str, str]]  # the item's fields as text
    answer: str | None  # None: not answered yet
    status: str
    error: str
    scores: list[dict]  # per grader of the eval: {"name", "score", "passed", "error"} or None


def ordered_fields(names, item_schema: dict) -> list[str]:
    """Item field names in the schema's `required` order, then the rest by name: PostgreSQL's
    jsonb does not keep an object's key order (a JSON list keeps its order everywhere)."""
    required = [n for n in item_schema.get("required") or [] if isinstance(n, str)]
    names = list(dict.fromkeys(names))
    return [n for n in required if n in names] + sorted(n for n in names if n not in required)


def is_chat(value) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in value)
    )


def field_text(value) -> str:
    """An item field as text: a chat (a list of messages, e.g. a replayed turn's prompt) one
    "role: text" line per message; other values as JSON."""
    if isinstance(value, str):
        return value
    if is_chat(value):
        return "\n".join(f"{m['role']}: {field_text(m['content'])}" for m in value)
    return json.dumps(value, ensure_ascii=False)


def scores_of(item: OutputItem, criteria: list[dict]) -> list[dict | None]:
    by_name = {r.get("name"): r for r in item.results or []}
    return [by_name.get(grader["name"]) for grader in criteria]


def item_row(item: OutputItem, criteria: list[dict]) -> ItemRow:
    if isinstance(item.item, dict):
        fields = [(name, item.item[name]) for name in ordered_fields(item.item, item.run.eval.item_schema)]
    else:
        fields = [("item", item.item)]
    return ItemRow(
        index=item.index,
        fields=[(str(name), field_text(value)) for name, value in fields],
        answer=item.output_text if answered(item) else None,
        status=item_status(item),
        error=item.error,
        scores=scores_of(item, criteria),
    )


def status_counts(run: Run) -> dict[str, int]:
    rows = run.items.filter(state=OutputItem.State.GRADED).values("status").annotate(n=Count("pk"))
    found = {row["status"]: row["n"] for row in rows}
    return {status: found.get(status, 0) for status in STATUSES}


# --- exports -------------------------------------------------------------------------------------
def export_records(run: Run):
    """One dict per item, in order: the item, the answer, each grade."""
    for item in run.items.order_by("index").iterator(chunk_size=200):
        yield {
            "index": item.index,
            "status": item_status(item),
            "item": item.item,
            "output_text": item.output_text if answered(item) else None,
            "finish_reason": item.finish_reason,
            "error": item.error,
            "results": item.results,
        }


def export_jsonl(run: Run) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in export_records(run))


def defuse(cell) -> str:
    """A CSV cell a spreadsheet will not run: text that starts like a formula gets a quote first."""
    if cell is None:
        text = ""
    elif isinstance(cell, int | float):
        text = str(cell)
    else:
        text = cell if isinstance(cell, str) else json.dumps(cell, ensure_ascii=False)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def export_csv(run: Run) -> str:
    """index, status, item.<field>... (every item's fields: see `ordered_fields`),
    output_text, finish_reason, error, then "<grader> score" and "<grader> passed" per grader."""
    records = list(export_records(run))
    names = ordered_fields(
        (name for record in records if isinstance(record["item"], dict) for name in record["item"]),
        run.eval.item_schema,
    )
    graders = [g["name"] for g in run.eval.testing_criteria]
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["index", "status", *(f"item.{n}" for n in names), "output_text", "finish_reason", "error"]
    writer.writerow([defuse(h) for h in header + [f"{g} {what}" for g in graders for what in ("score", "passed")]])
    for record in records:
        item = record["item"] if isinstance(record["item"], dict) else {}
        results = {r.get("name"): r for r in record["results"] or []}
        grades = []
        for name in graders:
            result = results.get(name)
            grades += [result["score"], result["passed"]] if result and not result.get("error") else ["", ""]
        row = [record["index"], record["status"], *(item.get(n) for n in names), record["output_text"],
               record["finish_reason"], record["error"], *grades]  # fmt: skip
        writer.writerow([defuse(cell) for cell in row])
    return out.getvalue()


# --- two runs ------------------------------------------------------------------------------------
_WORDS = re.compile(r"\s+|[^\s]+")


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """B's answer against A's, word by word: ("same" | "del" | "ins", text) pieces (whitespace
    stays with the words around it); the page escapes the text."""
    first, second = _WORDS.findall(a), _WORDS.findall(b)
    pieces: list[tuple[str, str]] = []
    matcher = difflib.SequenceMatcher(a=first, b=second, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            pieces.append(("same", "".join(first[i1:i2])))
            continue
        if op in ("delete", "replace"):
            pieces.append(("del", "".join(first[i1:i2])))
        if op in ("insert", "replace"):
            pieces.append(("ins", "".join(second[j1:j2])))
    return [p for p in pieces if p[1]]


@dataclass
class Tally:
    """How often A scored higher than B, B than A, or the same, over the items both have."""

    name: str
    a: int = 0
    b: int = 0
    tie: int = 0

    @property
    def total(self) -> int:
        return self.a + self.b + self.tie

    def add(self, winner: str) -> None:
        setattr(self, winner, getattr(self, winner) + 1)

    def cells(self) -> list[tuple[str, int, str]]:
        """(which, count, share as text) of A's wins, B's wins and ties."""
        return [(k, getattr(self, k), percent(rate(getattr(self, k), self.total))) for k in ("a", "b", "tie")]


@dataclass
class PairRow:
    index: int
    fields: list[tuple[str, str]]
    answer_a: str | None
    answer_b: str | None
    status_a: str
    status_b: str
    diff: list[tuple[str, str]]
    scores: list[dict]  # per grader: {"name", "a": result or None, "b": result or None}
    vote: str = ""


@dataclass
class Comparison:
    rows: list[PairRow] = field(default_factory=list)
    metrics: list[Tally] = field(default_factory=list)
    votes: Tally = field(default_factory=lambda: Tally("Your votes"))


def winner(a: float, b: float, *, lower_is_better: bool = False) -> str:
    if lower_is_better:
        a, b = b, a
    return "a" if a > b else "b" if b > a else "tie"


def compare(run_a: Run, run_b: Run, votes: dict[int, str]) -> Comparison:
    """Every item of the two runs (by index), with the win rates of A over B per grader (items
    both graded without a grader error) and the person's votes."""
    criteria = run_a.eval.testing_criteria
    items_b = {item.index: item for item in run_b.items.all()}
    comparison = Comparison(metrics=[Tally(g["name"]) for g in criteria])
    for item_a in run_a.items.all():
        item_b = items_b.get(item_a.index)
        if item_b is None:
            continue
        row = item_row(item_a, criteria)
        answer_b = item_b.output_text if answered(item_b) else None
        scores_a, scores_b = scores_of(item_a, criteria), scores_of(item_b, criteria)
        both_graded = item_a.state == item_b.state == OutputItem.State.GRADED
        for grader, tally, a, b in zip(criteria, comparison.metrics, scores_a, scores_b, strict=True):
            if both_graded and a and b and not a.get("error") and not b.get("error"):
                tally.add(winner(a["score"], b["score"], lower_is_better=graders.lower_is_better(grader)))
        both_answered = row.answer is not None and answer_b is not None
        comparison.rows.append(
            PairRow(
                index=item_a.index,
                fields=row.fields,
                answer_a=row.answer,
                answer_b=answer_b,
                status_a=row.status,
                status_b=item_status(item_b),
                diff=word_diff(row.answer, answer_b) if both_answered else [],
                scores=[
                    {"name": g["name"], "a": a, "b": b} for g, a, b in zip(criteria, scores_a, scores_b, strict=True)
                ],
                vote=votes.get(item_a.index, ""),
            )
        )
    for index, choice in votes.items():
        if index in items_b:
            comparison.votes.add(choice)
    return comparison
