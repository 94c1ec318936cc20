"""What the studio's "New evaluation" form offers ready-made: graders (each a grader config of
evals/graders.py, comparing the model's answer with a field of the item), data sources that ship
with the project, and the default prompt. The form builds an eval and its runs from them through
the same checks as the API (evals/definitions.py, evals/sources.py)."""

from __future__ import annotations

from dataclasses import dataclass

ANSWER = "{{sample.output_text}}"
DEFAULT_REFERENCE = "answer"  # the item field holding the expected answer
DEFAULT_SYSTEM = "Answer the question briefly."
DEFAULT_USER = "{{item.question}}"
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 0.0
DEFAULT_PROBE_ITEMS = 50


@dataclass(frozen=True)
class GraderPreset:
    key: str
    label: str
    help: str
    type: str
    operation: str = ""  # string_check
    metric: str = ""  # text_similarity
    threshold: float = 0.0

    def config(self, reference: str = DEFAULT_REFERENCE) -> dict:
        """The grader (testing_criteria entry), its reference the item field `reference`."""
        grader = {"type": self.type, "name": self.label, "input": ANSWER, "reference": f"{{{{item.{reference}}}}}"}
        if self.type == "perplexity":
            return {"type": self.type, "name": self.label, "reference": grader["reference"],
                    "pass_threshold": self.threshold}  # fmt: skip
        if self.type == "string_check":
            return {**grader, "operation": self.operation}
        return {**grader, "evaluation_metric": self.metric, "pass_threshold": self.threshold}


GRADERS = {
    preset.key: preset
    for preset in (
        GraderPreset("exact_match", "Exact match", "The answer equals the reference, ignoring case, punctuation "
                     "and articles (SQuAD).", "text_similarity", metric="exact_match", threshold=1.0),
        GraderPreset("mentioned", "Answer mentioned", "The reference appears in the answer, ignoring case.",
                     "string_check", operation="ilike"),
        GraderPreset("rouge_l", "ROUGE-L ≥ 0.5", "Longest common word sequence (F-measure) of at least 0.5.",
                     "text_similarity", metric="rouge_l", threshold=0.5),
        GraderPreset("bleu", "BLEU ≥ 0.3", "sacreBLEU's sentence BLEU of at least 0.3.", "text_similarity",
                     metric="bleu", threshold=0.3),
        GraderPreset("f1", "Token F1 ≥ 0.5", "SQuAD token F1 of at least 0.5.", "text_similarity", metric="f1",
                     threshold=0.5),
        GraderPreset("perplexity", "Perplexity ≤ 20", "How surprised the model is by the reference as its answer "
                     "(lower is better; measured with the model's weights, slower).", "perplexity", threshold=20.0),
    )
}  # fmt: skip
DEFAULT_GRADERS = ("exact_match", "mentioned")


@dataclass(frozen=True)
class DataPreset:
    """Items that ship with the project: the eval's item schema, and the run's `source`."""

    key: str
    label: str
    help: str
    item_schema: dict

    def size(self) -> int:
        """How many items it has in all."""
        raise NotImplementedError

    def source(self, limit: int) -> dict:
        """A run's `source` giving its first `limit` items."""
        raise NotImplementedError


class ProbePreset(DataPreset):
    def size(self) -> int:
        from finetuning.probe import load_items

        return len(load_items())

    def source(self, limit: int) -> dict:
        """The first `limit` items of the general probe, `{"question", "answer"}` (its first
        accepted answer): the `probe` source of evals/sources.py."""
        return {"type": "probe", "limit": limit}


QA_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
DATA = {
    "probe": ProbePreset(
        "probe",
        "General knowledge probe (ships with the project)",
        "Short questions of general knowledge (capitals, authors, science) with one-word answers.",
        QA_SCHEMA,
    ),
}


def default_template(system: str = DEFAULT_SYSTEM, user: str = DEFAULT_USER) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system.strip() else []
    return [*messages, {"role": "user", "content": user}]


# --- the schema of pasted items --------------------------------------------------------------------
def json_type(value) -> str | None:
    """The JSON schema type of a value (None for null: any type is accepted there)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def infer_schema(first: dict) -> dict:
    """The item schema of pasted items, from the first one: each of its fields, with its type,
    required in every item."""
    properties = {}
    for name, value in first.items():
        kind = json_type(value)
        properties[name] = {"type": kind} if kind else {}
    return {"type": "object", "properties": properties, "required": list(properties)}
