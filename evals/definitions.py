"""An eval's definition as OpenAI's Evals API gives it: a `custom` data source config (the JSON
schema of an item) and its testing criteria (graders, evals/graders.py)."""

from __future__ import annotations

from . import graders
from .errors import EvalError

MAX_NAME = 256
MAX_METADATA_KEYS = 16


def check_name(value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise EvalError(f"name must be text of at most {MAX_NAME} characters.", "name")
    return value.strip()


def check_metadata(value) -> dict:
    """OpenAI's metadata: at most 16 string keys (64 characters) with string values (512)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise EvalError(f"metadata must be an object of at most {MAX_METADATA_KEYS} keys.", "metadata")
    for key, item in value.items():
        if not isinstance(key, str) or len(key) > 64 or not isinstance(item, str) or len(item) > 512:
            raise EvalError(
                "metadata keys are text of at most 64 characters, its values text of at most 512.", "metadata"
            )
    return dict(value)


def check_data_source_config(value) -> tuple[dict, bool]:
    """(item_schema, include_sample_schema) from a `custom` config."""
    if not isinstance(value, dict):
        raise EvalError("data_source_config is required: an object of type custom.", "data_source_config")
    if value.get("type") != "custom":
        raise EvalError(
            f"data_source_config.type {value.get('type')!r} is not supported: use custom (with an item_schema).",
            "data_source_config.type",
        )
    schema = value.get("item_schema")
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise EvalError(
            'data_source_config.item_schema must be a JSON schema of an object, e.g. {"type": "object", '
            '"properties": {"question": {"type": "string"}}, "required": ["question"]}.',
            "data_source_config.item_schema",
        )
    properties = schema.get("properties", {})
    required = schema.get("required", [])
    if not isinstance(properties, dict) or not isinstance(required, list):
        raise EvalError(
            "item_schema.properties must be an object and item_schema.required a list.",
            "data_source_config.item_schema",
        )
    missing = [name for name in required if name not in properties]
    if properties and missing:
        raise EvalError(
            f"item_schema.required names fields that are not in its properties: {', '.join(map(str, missing))}.",
            "data_source_config.item_schema",
        )
    include_sample = value.get("include_sample_schema", False)
    if not isinstance(include_sample, bool):
        raise EvalError("include_sample_schema must be true or false.", "data_source_config.include_sample_schema")
    return schema, include_sample


def check_testing_criteria(value, item_schema: dict) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise EvalError("testing_criteria must be a non-empty list of graders.", "testing_criteria")
    try:
        return graders.validate_all(value, item_schema=item_schema)
    except graders.GraderError as exc:
        raise EvalError(str(exc), "testing_criteria") from exc


def schema_object(item_schema: dict, include_sample: bool) -> dict:
    """The `schema` the API answers for a custom config: an item, and the sample when asked."""
    properties = {"item": item_schema}
    if include_sample:
        properties["sample"] = {
            "type": "object",
            "properties": {"output_text": {"type": "string"}, "model": {"type": "string"}},
            "required": ["output_text"],
        }
    return {"type": "object", "properties": properties, "required": list(properties)}


def check_item(item, item_schema: dict, where: str) -> dict:
    """A data-source item: an object holding the schema's required fields, of the declared JSON
    types where the schema gives one."""
    if not isinstance(item, dict):
        raise EvalError(f"{where}: an item must be an object.", "data_source.source")
    properties = item_schema.get("properties") or {}
    missing = [name for name in item_schema.get("required") or [] if name not in item]
    if missing:
        raise EvalError(f"{where}: the item lacks the required field(s) {', '.join(missing)}.", "data_source.source")
    for name, rule in properties.items():
        expected = rule.get("type") if isinstance(rule, dict) else None
        if name in item and isinstance(expected, str) and not _is_type(item[name], expected):
            raise EvalError(f"{where}: the item's {name!r} must be of type {expected}.", "data_source.source")
    return item


_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _is_type(value, expected: str) -> bool:
    check = _TYPE_CHECKS.get(expected)
    return check is None or check(value)
