"""A run's data source, as OpenAI's Evals API gives it, turned into the items to answer.

- `completions`: a model answers each item. `input_messages` is a `template` (chat messages
  whose text may hold `{{item.*}}` placeholders) or an `item_reference` (a field of the item that
  holds the messages); `sampling_params` takes temperature, top_p, max_completion_tokens and seed.
- `jsonl`: the items come with their answers (`sample.output_text`); nothing is generated.

The items come inline (`file_content`), or (extensions, docs/evals.md) from a fine-tuning file
(`file_id`: every row), a fine-tuning job (`fine_tuning_job`: the rows it held out from
training), the general probe that ships with the project (`probe`) or the conversation logs
(`logs`: replayed turns, evals/replay.py). Every item is checked against the eval's item schema,
and every prompt rendered, before the run is made: a bad item refuses the whole run, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from inference import sampling

from . import placeholders
from .definitions import check_item
from .errors import EvalError

TYPES = ("completions", "jsonl")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_MESSAGES = 32
SAMPLING_PARAMS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "max_completion_tokens": "max_tokens",
}


@dataclass
class Item:
    item: dict
    sample: dict | None  # given with the item (jsonl), else None
    messages: list[dict]  # the rendered prompt (completions), else []


@dataclass
class Source:
    type: str
    model: str  # the model's id (completions), else ""
    sampling_params: dict
    items: list[Item]
    stored: dict  # the data source as stored and answered (its items left out)


def _content_text(content, where: str) -> str:
    """A template message's text: a string, or an input_text/output_text object (or a list of them)."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    texts = []
    for part in parts:
        if (
            not isinstance(part, dict)
            or part.get("type") not in ("input_text", "output_text")
            or not isinstance(part.get("text"), str)
        ):
            raise EvalError(
                f"{where}.content must be text, or input_text/output_text parts (images are not supported).",
                "data_source.input_messages",
            )
        texts.append(part["text"])
    return "".join(texts)


def _template(input_messages, item_schema: dict) -> list[dict]:
    template = input_messages.get("template")
    if not isinstance(template, list) or not 1 <= len(template) <= MAX_MESSAGES:
        raise EvalError(
            f"input_messages.template must be a list of 1 to {MAX_MESSAGES} messages.", "data_source.input_messages"
        )
    messages = []
    for i, message in enumerate(template):
        where = f"input_messages.template[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise EvalError(f"{where} needs a role: one of {', '.join(ROLES)}.", "data_source.input_messages")
        text = _content_text(message.get("content"), where)
        try:
            placeholders.check(text, item_schema=item_schema, allow_sample=False)
        except placeholders.PlaceholderError as exc:
            raise EvalError(f"{where}: {exc}", "data_source.input_messages") from exc
        messages.append({"role": ROLES[message["role"]], "content": text})
    return messages


def _referenced_messages(item: dict, reference: str, where: str) -> list[dict]:
    path = reference.strip().removeprefix("{{").removesuffix("}}").strip()
    try:
        value = placeholders.value(path, item=item)
    except placeholders.PlaceholderError as exc:
        raise EvalError(f"{where}: {exc}", "data_source.input_messages") from exc
    if not isinstance(value, list) or not value:
        raise EvalError(f"{where}: {path} must hold a list of chat messages.", "data_source.input_messages")
    messages = []
    for i, message in enumerate(value[:MAX_MESSAGES]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise EvalError(f"{where}: message {i} of {path} needs a role.", "data_source.input_messages")
        messages.append({"role": ROLES[message["role"]], "content": _content_text(message.get("content"), where)})
    return messages


def dataset_content(dataset, job=None) -> list[dict]:
    """Rows of a fine-tuning dataset as items: `{"messages": [the conversation up to its last
    answer], "answer": that answer}` (rows that do not end with an answer are left out). With
    `job`, only the rows that job held out from training (its own shuffle and split)."""
    from finetuning import training

    rows = training.read_rows(dataset.path)
    if job is not None:
        _, rows = training.split_rows(rows, job.hyperparameters.get("validation_split", 0), job.hyperparameters["seed"])
    return [
        {"item": {"messages": messages[:-1], "answer": messages[-1]["content"]}}
        for messages in rows
        if len(messages) > 1 and messages[-1].get("role") == "assistant"
    ]


def probe_content(limit: int | None) -> list[dict]:
    """The general probe that ships with the project (finetuning/probe.py) as items
    `{"question", "answer"}` (its first accepted answer)."""
    from finetuning.probe import load_items

    return [{"item": {"question": p.question, "answer": p.answers[0]}} for p in load_items(limit=limit)]


def _rows(source, resolve) -> list[dict]:
    if not isinstance(source, dict):
        raise EvalError("data_source.source is required: an object of type file_content.", "data_source.source")
    kind = source.get("type")
    if kind == "probe":
        limit = source.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise EvalError("source.limit must be a whole number of 1 or more.", "data_source.source")
        content = probe_content(limit)
    elif kind == "logs":
        content = resolve(source)
    elif kind in ("file_id", "fine_tuning_job"):
        if not isinstance(source.get("id"), str):
            raise EvalError(f"data_source.source.id is required for a {kind} source.", "data_source.source")
        content = resolve(source)
    elif kind == "file_content":
        content = source.get("content")
    else:
        raise EvalError(f"data_source.source.type {kind!r} is not supported: use file_content, file_id, "
                        "fine_tuning_job, probe or logs.", "data_source.source")  # fmt: skip
    limit = settings.EVALS_MAX_ITEMS
    if not isinstance(content, list) or not 1 <= len(content) <= limit:
        count = f" (it has {len(content)})" if isinstance(content, list) else ""
        raise EvalError(f"The source must give 1 to {limit} items{count}.", "data_source.source")
    return content


def parse(data_source, item_schema: dict, include_sample: bool, resolve=None) -> Source:
    """Check a run's data source against its eval; raise EvalError naming what to change.
    `resolve(source)` gives the rows of a file_id, fine_tuning_job or logs source (the caller
    looks up what the user owns)."""
    if not isinstance(data_source, dict) or data_source.get("type") not in TYPES:
        given = data_source.get("type") if isinstance(data_source, dict) else None
        raise EvalError(f"data_source.type must be one of {', '.join(TYPES)} (got {given!r}).", "data_source.type")
    kind = data_source["type"]
    model = data_source.get("model") or ""
    if kind == "completions" and (not isinstance(model, str) or not model):
        raise EvalError("data_source.model is required: the model that answers the items.", "data_source.model")
    params = data_source.get("sampling_params") or {}
    if not isinstance(params, dict):
        raise EvalError("data_source.sampling_params must be an object.", "data_source.sampling_params")
    for name in params:
        if name not in SAMPLING_PARAMS:
            raise EvalError(
                f"sampling_params.{name} is not supported; use {', '.join(SAMPLING_PARAMS)}.",
                "data_source.sampling_params",
            )
    template, reference = None, None
    if kind == "completions":
        input_messages = data_source.get("input_messages")
        if not isinstance(input_messages, dict) or input_messages.get("type") not in ("template", "item_reference"):
            raise EvalError(
                "data_source.input_messages is required: a template of chat messages, or an item_reference.",
                "data_source.input_messages",
            )
        if input_messages["type"] == "template":
            template = _template(input_messages, item_schema)
        elif not isinstance(input_messages.get("item_reference"), str):
            raise EvalError("input_messages.item_reference must name an item field, e.g. item.messages.",
                            "data_source.input_messages")  # fmt: skip
        else:
            reference = input_messages["item_reference"]
    items = []
    for i, row in enumerate(_rows(data_source.get("source"), resolve)):
        where = f"data_source.source.content[{i}]"
        if not isinstance(row, dict) or "item" not in row:
            raise EvalError(f'{where} must be an object with an "item".', "data_source.source")
        item = check_item(row["item"], item_schema, where)
        sample = row.get("sample")
        if kind == "jsonl":
            if not isinstance(sample, dict) or not isinstance(sample.get("output_text"), str):
                raise EvalError(f'{where}: a jsonl row needs "sample": {{"output_text": "..."}} to grade.',
                                "data_source.source")  # fmt: skip
        if template is not None:
            try:
                messages = [{**m, "content": placeholders.render(m["content"], item=item)} for m in template]
            except placeholders.PlaceholderError as exc:
                raise EvalError(f"{where}: {exc}", "data_source.source") from exc
        elif reference is not None:
            messages = _referenced_messages(item, reference, where)
        else:
            messages = []
        items.append(Item(item, sample if kind == "jsonl" else None, messages))
    stored = {k: v for k, v in data_source.items() if k != "source"}
    source = data_source["source"]
    stored["source"] = {**source, "content": []} if source["type"] == "file_content" else dict(source)
    return Source(kind, model if kind == "completions" else "", params, items, stored)


def resolve_sampling(params: dict, model) -> dict:
    """The run's generation settings: what sampling_params gives, the model's defaults for the rest."""
    asked = {SAMPLING_PARAMS[name]: value for name, value in params.items() if value is not None}
    try:
        return sampling.resolve(asked, model, cap=model.max_new_tokens_cap)
    except sampling.SettingsError as exc:
        name = next((k for k, v in SAMPLING_PARAMS.items() if v == exc.field), exc.field)
        raise EvalError(f"sampling_params: {exc.message}".replace("max_tokens", name),
                        "data_source.sampling_params") from exc  # fmt: skip
