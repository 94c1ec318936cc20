"""The studio's "New evaluation" and "Run again" forms: they read and check what the person typed
(pasted or uploaded JSONL items, a preset data source, graders, the prompt, one or two models),
then make the eval and its runs through evals/actions.py, all or nothing. A refusal from the
checks the API shares (EvalError) is shown on the field it is about."""

from __future__ import annotations

import json
import re

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from inference.models import LanguageModel

from . import actions, definitions, presets, replay
from .errors import EvalError
from .models import Eval, Run

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_PROMPT_CHARS = 8000
FIELD_NAME = re.compile(r"[^\s.{}]+")  # one placeholder segment (evals/placeholders.py)
PASTE, UPLOAD, REPLAY = "paste", "upload", "replay"


def parse_jsonl(text: str) -> list[tuple[int, dict]]:
    """(line number, item) per non-empty line; a line `{"item": {...}}` (the API's row) gives its
    item. Raises ValidationError naming the first bad line."""
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"Line {number} is not valid JSON: {exc.msg} (column {exc.colno}).") from exc
        if isinstance(row, dict) and isinstance(row.get("item"), dict) and set(row) <= {"item", "sample"}:
            row = row["item"]
        if not isinstance(row, dict) or not row:
            raise ValidationError(
                f'Line {number} must be a JSON object of the item\'s fields, such as {{"question": "...", '
                '"answer": "..."}.'
            )
        items.append((number, row))
    if not items:
        raise ValidationError('Give at least one item: one JSON object per line, e.g. {"question": "...", '
                              '"answer": "..."}.')  # fmt: skip
    if len(items) > settings.EVALS_MAX_ITEMS:
        raise ValidationError(f"There are {len(items)} items; a run takes at most {settings.EVALS_MAX_ITEMS}.")
    return items


def check_items(items: list[tuple[int, dict]]) -> dict:
    """The item schema the first item gives; every item must follow it. Returns the schema."""
    schema = presets.infer_schema(items[0][1])
    for number, item in items:
        try:
            definitions.check_item(item, schema, f"Line {number}")
        except EvalError as exc:
            raise ValidationError(exc.message + " (The first item sets the fields every item needs.)") from exc
    return schema


def model_choices(user) -> list[tuple[str, str]]:
    return [(m.slug, m.name) for m in LanguageModel.objects.usable_by(user).order_by("name", "pk")]


class ModelChoice(forms.ChoiceField):
    default_error_messages = {
        "invalid_choice": "Pick one of the models you may use (%(value)s is not one of them).",
        "required": "Pick a model to answer the items.",
    }


class NewEvalForm(forms.Form):
    name = forms.CharField(max_length=definitions.MAX_NAME, error_messages={"required": "Name the evaluation."})
    source = forms.ChoiceField(widget=forms.RadioSelect, initial=PASTE)
    items = forms.CharField(widget=forms.Textarea(attrs={"rows": 6, "spellcheck": "false"}), required=False,
                            strip=False)  # fmt: skip
    file = forms.FileField(required=False)
    limit = forms.IntegerField(min_value=1, initial=presets.DEFAULT_PROBE_ITEMS, required=False)
    replay_limit = forms.IntegerField(min_value=1, initial=replay.DEFAULT_LIMIT, required=False)
    replay_model = forms.ChoiceField(required=False)
    replay_since = forms.DateField(required=False, error_messages={"invalid": "Give a date, YYYY-MM-DD."})
    replay_until = forms.DateField(required=False, error_messages={"invalid": "Give a date, YYYY-MM-DD."})
    replay_rating = forms.ChoiceField(
        required=False,
        initial="any",
        choices=[("any", "any rating"), ("up", "thumbs up"), ("down", "thumbs down"), ("rated", "rated (up or down)"),
                 ("unrated", "not rated")],
    )  # fmt: skip
    graders = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        choices=[(key, preset.label) for key, preset in presets.GRADERS.items()],
        initial=list(presets.DEFAULT_GRADERS),
        error_messages={"required": "Choose at least one grader."},
    )
    reference = forms.CharField(max_length=100, initial=presets.DEFAULT_REFERENCE)
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                    max_length=MAX_PROMPT_CHARS, initial=presets.DEFAULT_SYSTEM)  # fmt: skip
    user_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), max_length=MAX_PROMPT_CHARS,
                                  initial=presets.DEFAULT_USER)  # fmt: skip
    max_new_tokens = forms.IntegerField(min_value=1, max_value=4096, initial=presets.DEFAULT_MAX_NEW_TOKENS)
    temperature = forms.FloatField(min_value=0, max_value=2, initial=presets.DEFAULT_TEMPERATURE)
    model_a = ModelChoice()
    model_b = ModelChoice(required=False)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["source"].choices = [
            (PASTE, "Paste JSONL"),
            (UPLOAD, "Upload a .jsonl file"),
            *((key, preset.label) for key, preset in presets.DATA.items()),
            (REPLAY, "Replay logged conversations"),
        ]
        choices = model_choices(user)
        logged = (
            LanguageModel.objects.all() if replay.may_replay_everyone(user) else LanguageModel.objects.usable_by(user)
        )
        self.fields["replay_model"].choices = [
            ("", "any model"),
            *((m.slug, m.name) for m in logged.order_by("name", "pk")),
        ]
        self.fields["model_a"].choices = choices
        self.fields["model_b"].choices = [("", "— none —"), *choices]
        default = LanguageModel.default()
        if default is not None and any(slug == default.slug for slug, _ in choices):
            self.fields["model_a"].initial = default.slug
        self.item_schema: dict = {}
        self.data_source: dict = {}
        self.replays_everyone = replay.may_replay_everyone(user)

    # --- checks ----------------------------------------------------------------------------------
    def clean_reference(self) -> str:
        reference = self.cleaned_data["reference"].strip()
        if not FIELD_NAME.fullmatch(reference):
            raise ValidationError("Name one field of the items, such as answer (no spaces, dots or braces).")
        return reference

    def clean_file(self):
        uploaded = self.cleaned_data.get("file")
        if uploaded is not None and uploaded.size > MAX_UPLOAD_BYTES:
            raise ValidationError(f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
        return uploaded

    def _items_text(self, kind: str) -> str:
        if kind == PASTE:
            return self.cleaned_data.get("items") or ""
        uploaded = self.cleaned_data.get("file")
        if uploaded is None:
            raise ValidationError("Choose a .jsonl file to upload.")
        try:
            return uploaded.read().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError("The file is not UTF-8 text: save it as UTF-8 JSONL.") from exc

    def _clean_source(self, kind: str) -> None:
        if kind in (PASTE, UPLOAD):
            field = "items" if kind == PASTE else "file"
            try:
                items = parse_jsonl(self._items_text(kind))
                self.item_schema = check_items(items)
            except ValidationError as exc:
                self.add_error(field, exc)
                return
            self.data_source = {"type": "file_content", "content": [{"item": item} for _, item in items]}
            return
        if kind == REPLAY:
            self._clean_replay()
            return
        preset = presets.DATA[kind]
        limit = self.cleaned_data.get("limit") or presets.DEFAULT_PROBE_ITEMS
        if limit > settings.EVALS_MAX_ITEMS:
            self.add_error("limit", f"A run takes at most {settings.EVALS_MAX_ITEMS} items.")
            return
        if limit > (size := preset.size()):
            self.add_error("limit", f"It has {size} items: ask for {size} at most.")
            return
        self.item_schema = preset.item_schema
        self.data_source = preset.source(limit)

    def _clean_replay(self) -> None:
        """A logs source (evals/replay.py): its turns are found when the run is made."""
        data = self.cleaned_data
        limit = data.get("replay_limit") or replay.DEFAULT_LIMIT
        if limit > settings.EVALS_MAX_ITEMS:
            self.add_error("replay_limit", f"A run takes at most {settings.EVALS_MAX_ITEMS} items.")
            return
        source = {"type": "logs", "limit": limit, "rating": data.get("replay_rating") or "any"}
        if data.get("replay_model"):
            source["model"] = data["replay_model"]
        for name in ("since", "until"):
            if data.get(f"replay_{name}"):
                source[name] = data[f"replay_{name}"].isoformat()
        try:
            replay.check(source)
        except EvalError as exc:
            self.add_error("replay_until" if "since" in exc.message else None, exc.message)
            return
        self.item_schema = replay.SCHEMA
        self.data_source = source

    def clean(self):
        data = super().clean()
        kind = data.get("source")
        if kind:
            self._clean_source(kind)
        reference = data.get("reference")
        properties = self.item_schema.get("properties") or {}
        if self.item_schema and reference and reference not in properties:
            self.add_error("reference", f"The items have no field {reference!r} to compare the answers with (they "
                           f"have: {', '.join(properties)}). Name the field that holds the expected answer.")  # fmt: skip
        if data.get("model_a") and data.get("model_a") == data.get("model_b"):
            self.add_error("model_b", "Pick another model to compare with, or none.")
        try:
            actions.check_room(self.user, len(self.models()) or 1)
        except EvalError as exc:
            raise ValidationError(exc.message) from exc
        return data

    def models(self) -> list[str]:
        return [slug for slug in (self.cleaned_data.get("model_a"), self.cleaned_data.get("model_b")) if slug]

    # --- do ----------------------------------------------------------------------------------------
    def save(self) -> Eval | None:
        """The eval and its runs, or None with the refusal added to the form (nothing kept)."""
        data = self.cleaned_data
        criteria = [presets.GRADERS[key].config(data["reference"]) for key in data["graders"]]
        if data.get("source") == REPLAY:
            template = None  # each turn is asked again with the prompt it had (item.messages)
        else:
            template = presets.default_template(data.get("system_prompt") or "", data["user_prompt"])
        try:
            return actions.create_with_runs(
                self.user, name=data["name"], item_schema=self.item_schema, testing_criteria=criteria,
                template=template, temperature=data["temperature"], max_new_tokens=data["max_new_tokens"],
                source=self.data_source, models=self.models(),
            )  # fmt: skip
        except EvalError as exc:
            field, message = self.field_of(exc, has_system=template is not None and len(template) > 1)
            self.add_error(field, message)
            return None

    def field_of(self, exc: EvalError, *, has_system: bool) -> tuple[str | None, str]:
        """The form field an EvalError is about, and its message as the form says it."""
        param, message = exc.param or "", exc.message
        prompt = re.match(r"input_messages\.template\[(\d+)\]: ", message)
        if prompt:
            first_is_system = has_system and prompt.group(1) == "0"
            return ("system_prompt" if first_is_system else "user_prompt"), message[prompt.end() :]
        if param == "data_source.sampling_params":
            return ("temperature" if "temperature" in message else "max_new_tokens"), message
        fields = {"name": "name", "testing_criteria": "graders", "data_source.model": "model_a"}
        if param == "data_source.source":
            kind = self.cleaned_data.get("source")
            return {PASTE: "items", REPLAY: "replay_limit"}.get(kind), message
        return fields.get(param), message


class RunAgainForm(forms.Form):
    model = ModelChoice()

    def __init__(self, *args, user, evaluation: Eval, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.evaluation = evaluation
        self.fields["model"].choices = model_choices(user)

    def save(self) -> Run | None:
        try:
            return actions.run_again(self.user, self.evaluation, self.cleaned_data["model"])
        except EvalError as exc:
            self.add_error(None, exc.message)
            return None
