"""GET /v1/openapi.json: an OpenAPI 3.1 document of the whole /v1 surface, readable without a key.

Built from small helpers so each operation reads as one line of what it takes and answers; the
limits in it come from the same settings and constants the views use. tests/test_api_finetuning.py
checks that every route in api/urls.py is in it."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.http import require_GET

from finetuning.hyperparameters import RULES

from .completions import UNSUPPORTED
from .errors import TYPES


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict, required: tuple = (), **extra) -> dict:
    return {"type": "object", "properties": properties, "required": list(required), **extra}


def nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def const(value) -> dict:
    return {"type": "string", "const": value}


def page_of(item: str) -> dict:
    return obj(
        {
            "object": const("list"),
            "data": {"type": "array", "items": ref(item)},
            "has_more": {"type": "boolean"},
            "first_id": nullable({"type": "string"}),
            "last_id": nullable({"type": "string"}),
        },
        ("object", "data", "has_more"),
    )


def auto_or(kind: str, **bounds) -> dict:
    return {"anyOf": [const("auto"), {"type": kind, **bounds}]}


STRING, INTEGER, NUMBER = {"type": "string"}, {"type": "integer"}, {"type": "number"}
BOOLEAN = {"type": "boolean"}
EPOCHS, BATCH, SEED = RULES["epochs"], RULES["batch_size"], RULES["seed"]

SCHEMAS = {
    "Error": obj(
        {
            "error": obj(
                {
                    "message": STRING,
                    "type": {"type": "string", "enum": sorted(set(TYPES.values()))},
                    "param": nullable(STRING),
                    "code": nullable(STRING),
                },
                ("message", "type", "param", "code"),
            )
        },
        ("error",),
    ),
    "Model": obj(
        {"id": STRING, "object": const("model"), "created": INTEGER, "owned_by": STRING},
        ("id", "object", "created", "owned_by"),
    ),
    "ModelList": obj({"object": const("list"), "data": {"type": "array", "items": ref("Model")}}, ("object", "data")),
    "ChatMessage": obj(
        {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {
                "anyOf": [
                    STRING,
                    {"type": "array", "items": obj({"type": const("text"), "text": STRING}, ("type", "text"))},
                ]
            },
        },
        ("role", "content"),
    ),
    "ChatCompletionRequest": obj(
        {
            "model": {**STRING, "description": "A model id from GET /v1/models (tuned models included)."},
            "messages": {"type": "array", "items": ref("ChatMessage"), "minItems": 1},
            "stream": {"type": "boolean", "description": "Answer as server-sent events, ending with `data: [DONE]`."},
            "stream_options": obj({"include_usage": {"type": "boolean"}}),
            "n": {"type": "integer", "minimum": 1, "maximum": settings.API_MAX_CHOICES},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "temperature": NUMBER,
            "top_p": NUMBER,
            "top_k": INTEGER,
            "min_p": NUMBER,
            "repetition_penalty": NUMBER,
            "frequency_penalty": NUMBER,
            "presence_penalty": NUMBER,
            "seed": INTEGER,
            "stop": {"anyOf": [STRING, {"type": "array", "items": STRING}]},
        },
        ("model", "messages"),
        description=f"Not supported (400): {', '.join(UNSUPPORTED)}, logprobs.",
    ),
    "Usage": obj(
        {"prompt_tokens": INTEGER, "completion_tokens": INTEGER, "total_tokens": INTEGER},
        ("prompt_tokens", "completion_tokens", "total_tokens"),
    ),
    "ChatCompletion": obj(
        {
            "id": STRING,
            "object": const("chat.completion"),
            "created": INTEGER,
            "model": STRING,
            "choices": {
                "type": "array",
                "items": obj(
                    {
                        "index": INTEGER,
                        "message": obj({"role": const("assistant"), "content": STRING}, ("role", "content")),
                        "finish_reason": {"type": "string", "enum": ["stop", "length", "content_filter"]},
                    },
                    ("index", "message", "finish_reason"),
                ),
            },
            "usage": ref("Usage"),
        },
        ("id", "object", "created", "model", "choices", "usage"),
    ),
    "ChatCompletionChunk": obj(
        {
            "id": STRING,
            "object": const("chat.completion.chunk"),
            "created": INTEGER,
            "model": STRING,
            "choices": {
                "type": "array",
                "items": obj(
                    {
                        "index": INTEGER,
                        "delta": obj({"role": const("assistant"), "content": STRING}),
                        "finish_reason": nullable({"type": "string", "enum": ["stop", "length", "content_filter"]}),
                    },
                    ("index", "delta", "finish_reason"),
                ),
            },
            "usage": nullable(ref("Usage")),
        },
        ("id", "object", "created", "model", "choices"),
        description="One server-sent event (`data: {...}`) of a streamed completion.",
    ),
    "File": obj(
        {
            "id": {**STRING, "description": "file-<number>"},
            "object": const("file"),
            "bytes": {**INTEGER, "description": "Size of the stored (normalized) rows."},
            "created_at": INTEGER,
            "filename": STRING,
            "purpose": const("fine-tune"),
            "status": const("processed"),
        },
        ("id", "object", "bytes", "created_at", "filename", "purpose", "status"),
    ),
    "FileList": page_of("File"),
    "FileDeleted": obj(
        {"id": STRING, "object": const("file"), "deleted": {"type": "boolean"}}, ("id", "object", "deleted")
    ),
    "FileUpload": obj(
        {
            "file": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "A .jsonl, .ndjson, .json or .csv dataset of chat rows, at most "
                f"{settings.FINETUNE_MAX_UPLOAD_BYTES} bytes (413 above). A file with bad rows is refused "
                "(400) with the first bad lines and why.",
            },
            "purpose": const("fine-tune"),
        },
        ("file", "purpose"),
    ),
    "Hyperparameters": obj(
        {
            "n_epochs": auto_or("integer", minimum=EPOCHS.lo, maximum=EPOCHS.hi),
            "batch_size": auto_or("integer", minimum=BATCH.lo, maximum=BATCH.hi),
            "learning_rate_multiplier": auto_or("number", exclusiveMinimum=0),
        },
        description='Each "auto" (or left out) takes the studio\'s default; learning_rate_multiplier '
        "multiplies the default learning rate.",
        additionalProperties=False,
    ),
    "FineTuningJobRequest": obj(
        {
            "model": {**STRING, "description": "The base model: an id from GET /v1/models."},
            "training_file": {**STRING, "description": "A file id from POST /v1/files."},
            "hyperparameters": ref("Hyperparameters"),
            "suffix": {"type": "string", "minLength": 1, "maxLength": 64},
            "seed": {"type": "integer", "minimum": SEED.lo, "maximum": SEED.hi},
            "method": obj(
                {
                    "type": const("supervised"),
                    "supervised": obj({"hyperparameters": ref("Hyperparameters")}),
                },
                ("type",),
            ),
        },
        ("model", "training_file"),
    ),
    "FineTuningJob": obj(
        {
            "id": {**STRING, "description": "ftjob-<number>"},
            "object": const("fine_tuning.job"),
            "created_at": INTEGER,
            "finished_at": nullable(INTEGER),
            "model": STRING,
            "fine_tuned_model": nullable(
                {**STRING, "description": "Once succeeded: a model id for /v1/chat/completions."}
            ),
            "organization_id": STRING,
            "status": {
                "type": "string",
                "enum": ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"],
            },
            "hyperparameters": obj(
                {"n_epochs": INTEGER, "batch_size": INTEGER, "learning_rate_multiplier": NUMBER},
                ("n_epochs", "batch_size", "learning_rate_multiplier"),
            ),
            "training_file": STRING,
            "validation_file": {"type": "null"},
            "result_files": {"type": "array", "items": STRING},
            "trained_tokens": nullable(INTEGER),
            "error": nullable(
                obj({"code": STRING, "message": STRING, "param": nullable(STRING)}, ("code", "message", "param"))
            ),
            "seed": INTEGER,
            "estimated_finish": nullable(INTEGER),
        },
        ("id", "object", "created_at", "model", "status", "hyperparameters", "training_file", "seed"),
    ),
    "FineTuningJobList": page_of("FineTuningJob"),
    "FineTuningJobEvent": obj(
        {
            "id": STRING,
            "object": const("fine_tuning.job.event"),
            "created_at": INTEGER,
            "level": {"type": "string", "enum": ["info", "warn", "error"]},
            "message": STRING,
            "type": const("message"),
        },
        ("id", "object", "created_at", "level", "message"),
    ),
    "FineTuningJobEventList": page_of("FineTuningJobEvent"),
    "FineTuningJobCheckpoint": obj(
        {
            "id": STRING,
            "object": const("fine_tuning.job.checkpoint"),
            "created_at": INTEGER,
            "fine_tuned_model_checkpoint": STRING,
            "fine_tuning_job_id": STRING,
            "step_number": INTEGER,
            "metrics": obj({"step": NUMBER, "train_loss": nullable(NUMBER), "valid_loss": nullable(NUMBER)}),
        },
        ("id", "object", "created_at", "fine_tuned_model_checkpoint", "fine_tuning_job_id", "step_number"),
    ),
    "FineTuningJobCheckpointList": page_of("FineTuningJobCheckpoint"),
    "Grader": obj(
        {
            "type": {"type": "string", "enum": ["string_check", "text_similarity", "perplexity"]},
            "name": STRING,
            "input": {**STRING, "description": "A template, e.g. {{sample.output_text}}."},
            "reference": {**STRING, "description": "A template, e.g. {{item.answer}}."},
            "operation": {"type": "string", "enum": ["eq", "ne", "like", "ilike"]},
            "evaluation_metric": {
                "type": "string",
                "enum": [
                    "bleu",
                    "gleu",
                    "rouge_1",
                    "rouge_2",
                    "rouge_3",
                    "rouge_4",
                    "rouge_5",
                    "rouge_l",
                    "fuzzy_match",
                    "exact_match",
                    "f1",
                ],
            },
            "pass_threshold": {"type": "number", "minimum": 0},
        },
        ("type", "name", "reference"),
        description="string_check takes input and operation; text_similarity takes input, evaluation_metric and "
        "pass_threshold (0 to 1); perplexity takes pass_threshold (1 or more, passed at or below it). exact_match, "
        "f1 and perplexity are extensions: docs/evals.md.",
    ),  # fmt: skip
    "EvalRequest": obj(
        {
            "name": STRING,
            "metadata": {"type": "object", "additionalProperties": STRING},
            "data_source_config": obj(
                {"type": const("custom"), "item_schema": {"type": "object"}, "include_sample_schema": BOOLEAN},
                ("type", "item_schema"),
            ),
            "testing_criteria": {"type": "array", "items": ref("Grader"), "minItems": 1},
        },
        ("data_source_config", "testing_criteria"),
    ),
    "Eval": obj(
        {
            "id": {**STRING, "description": "eval_<number>"},
            "object": const("eval"),
            "created_at": INTEGER,
            "name": STRING,
            "metadata": nullable({"type": "object"}),
            "data_source_config": obj({"type": const("custom"), "schema": {"type": "object"}}),
            "testing_criteria": {"type": "array", "items": ref("Grader")},
        },
        ("id", "object", "created_at", "name", "data_source_config", "testing_criteria"),
    ),
    "EvalList": page_of("Eval"),
    "EvalDeleted": obj({"object": const("eval.deleted"), "deleted": BOOLEAN, "eval_id": STRING}),
    "EvalRunRequest": obj(
        {
            "name": STRING,
            "metadata": {"type": "object", "additionalProperties": STRING},
            "data_source": obj(
                {
                    "type": {"type": "string", "enum": ["completions", "jsonl"]},
                    "model": STRING,
                    "input_messages": {"type": "object", "description": "A template, or an item_reference."},
                    "sampling_params": obj(
                        {"temperature": NUMBER, "top_p": NUMBER, "seed": INTEGER, "max_completion_tokens": INTEGER}
                    ),
                    "source": obj(
                        {
                            "type": const("file_content"),
                            "content": {
                                "type": "array",
                                "items": obj({"item": {"type": "object"}, "sample": {"type": "object"}}, ("item",)),
                            },
                        },
                        ("type", "content"),
                    ),
                },
                ("type", "source"),
            ),
        },
        ("data_source",),
    ),  # fmt: skip
    "EvalRun": obj(
        {
            "id": {**STRING, "description": "evalrun_<number>"},
            "object": const("eval.run"),
            "eval_id": STRING,
            "created_at": INTEGER,
            "name": STRING,
            "model": STRING,
            "status": {"type": "string", "enum": ["queued", "in_progress", "completed", "canceled", "failed"]},
            "data_source": {"type": "object"},
            "error": nullable(obj({"code": STRING, "message": STRING})),
            "report_url": STRING,
            "result_counts": obj({"total": INTEGER, "passed": INTEGER, "failed": INTEGER, "errored": INTEGER}),
            "per_testing_criteria_results": {
                "type": "array",
                "items": obj({"testing_criteria": STRING, "passed": INTEGER, "failed": INTEGER}),
            },
            "progress": obj(
                {"items": INTEGER, "answered": INTEGER, "graded": INTEGER},
                description="An extension: items answered and graded so far.",
            ),
            "per_model_usage": {"type": "array", "items": {"type": "object"}},
        },
        ("id", "object", "eval_id", "status", "result_counts", "per_testing_criteria_results"),
    ),  # fmt: skip
    "EvalRunList": page_of("EvalRun"),
    "EvalRunDeleted": obj({"object": const("eval.run.deleted"), "deleted": BOOLEAN, "run_id": STRING}),
    "EvalOutputItem": obj(
        {
            "id": {**STRING, "description": "outputitem_<number>"},
            "object": const("eval.run.output_item"),
            "eval_id": STRING,
            "run_id": STRING,
            "created_at": INTEGER,
            "status": {"type": "string", "enum": ["pass", "fail", "error", "pending", "skipped"]},
            "datasource_item_id": INTEGER,
            "datasource_item": {"type": "object"},
            "results": {
                "type": "array",
                "items": obj({"name": STRING, "type": STRING, "score": NUMBER, "passed": BOOLEAN}),
            },
            "sample": {"type": "object", "description": "input, output, finish_reason, model, usage, error."},
        },
        ("id", "object", "status", "datasource_item_id", "results", "sample"),
    ),  # fmt: skip
    "EvalOutputItemList": page_of("EvalOutputItem"),
}

ERRORS = {
    "400": "The request is invalid; `error.param` names the parameter.",
    "401": "No key, or an unknown or revoked key.",
    "403": "The key's user may not use files or fine-tuning.",
    "404": "No such object (another user's ids answer the same).",
    "409": "The object is in use or already ended.",
    "413": "The body or the file is too large.",
    "429": "The key's rate limit was reached (Retry-After).",
}


def json_body(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def op(op_id: str, summary: str, answer: str, *, errors=("401", "429"), body=None, params=(), content=None) -> dict:
    """An operation answering `answer` (a schema name) as JSON, or the given media types."""
    ok = {"description": "OK", "content": content or {"application/json": {"schema": ref(answer)}}}
    responses = {"200": ok} | {code: {"description": ERRORS[code], **json_body(ref("Error"))} for code in errors}
    operation = {"operationId": op_id, "summary": summary, "responses": responses}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    if params:
        operation["parameters"] = list(params)
    return operation


def path_param(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": STRING, "description": description}


def query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def paging(max_limit: int) -> tuple[dict, dict]:
    return (
        query("after", STRING, "The last id of the previous page."),
        query("limit", {"type": "integer", "minimum": 1, "maximum": max_limit}, "Items per page."),
    )


FT = ("401", "403", "429")
FILE_ID = path_param("file_id", "file-<number>")
JOB_ID = path_param("fine_tuning_job_id", "ftjob-<number>")
JOB_ERRORS = (*FT, "404")
EVAL_ID = path_param("eval_id", "eval_<number>")
RUN_ID = path_param("run_id", "evalrun_<number>")
EVAL_ERRORS = ("401", "404", "429")
ORDER = query("order", {"type": "string", "enum": ["asc", "desc"]}, "By creation time; desc by default.")

PATHS = {
    "/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document (no key needed).",
            "security": [],
            "responses": {"200": {"description": "OK", **json_body({"type": "object"})}},
        }
    },
    "/models": {"get": op("listModels", "The models this key's user may use.", "ModelList")},
    "/models/{model_id}": {
        "get": op(
            "retrieveModel",
            "One model.",
            "Model",
            errors=("401", "404", "429"),
            params=[path_param("model_id", "A model id.")],
        )
    },
    "/chat/completions": {
        "post": op(
            "createChatCompletion",
            "A chat completion; with stream=true, server-sent events of ChatCompletionChunk then [DONE].",
            "ChatCompletion",
            errors=("400", "401", "404", "413", "429"),
            body=json_body(ref("ChatCompletionRequest"))["content"],
            content={
                "application/json": {"schema": ref("ChatCompletion")},
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "`data: <ChatCompletionChunk>` events, then `data: [DONE]`.",
                    }
                },
            },
        )
    },
    "/files": {
        "get": op(
            "listFiles",
            "The user's fine-tuning files, newest first.",
            "FileList",
            errors=("400", *FT),
            params=[
                *paging(10_000),
                query("order", {"type": "string", "enum": ["asc", "desc"]}, "By creation time; desc by default."),
                query("purpose", STRING, "Only files of this purpose (here all are fine-tune)."),
            ],
        ),
        "post": op(
            "createFile",
            "Upload a dataset; its rows are checked as on the upload page.",
            "File",
            errors=("400", *FT, "413"),
            body={"multipart/form-data": {"schema": ref("FileUpload")}},
        ),
    },
    "/files/{file_id}": {
        "get": op("retrieveFile", "One file.", "File", errors=(*FT, "404"), params=[FILE_ID]),
        "delete": op(
            "deleteFile",
            "Delete a file no unfinished job uses.",
            "FileDeleted",
            errors=(*FT, "404", "409"),
            params=[FILE_ID],
        ),
    },
    "/files/{file_id}/content": {
        "get": op(
            "downloadFile",
            'The stored rows as JSON Lines ({"messages": [...]} per line).',
            "File",
            errors=(*FT, "404"),
            params=[FILE_ID],
            content={"application/jsonl": {"schema": {"type": "string"}}},
        )
    },
    "/fine_tuning/jobs": {
        "get": op(
            "listFineTuningJobs",
            "The user's jobs, newest first.",
            "FineTuningJobList",
            errors=("400", *FT),
            params=list(paging(100)),
        ),
        "post": op(
            "createFineTuningJob",
            "Queue a supervised (LoRA) fine-tuning job.",
            "FineTuningJob",
            errors=("400", *FT, "404"),
            body=json_body(ref("FineTuningJobRequest"))["content"],
        ),
    },
    "/fine_tuning/jobs/{fine_tuning_job_id}": {
        "get": op("retrieveFineTuningJob", "One job.", "FineTuningJob", errors=JOB_ERRORS, params=[JOB_ID])
    },
    "/fine_tuning/jobs/{fine_tuning_job_id}/events": {
        "get": op(
            "listFineTuningEvents",
            "The job's log, newest first.",
            "FineTuningJobEventList",
            errors=("400", *JOB_ERRORS),
            params=[JOB_ID, *paging(100)],
        )
    },
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": {
        "get": op(
            "listFineTuningJobCheckpoints",
            "The job's saved checkpoints, newest first.",
            "FineTuningJobCheckpointList",
            errors=("400", *JOB_ERRORS),
            params=[JOB_ID, *paging(100)],
        )
    },
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel": {
        "post": op(
            "cancelFineTuningJob",
            "Cancel a job: at once if queued, at its next step if running.",
            "FineTuningJob",
            errors=(*JOB_ERRORS, "409"),
            params=[JOB_ID],
        )
    },
    "/evals": {
        "get": op("listEvals", "The user's evals, newest first.", "EvalList", errors=("400", "401", "429"),
                  params=[*paging(100), ORDER]),
        "post": op("createEval", "Create an eval: an item schema and its graders.", "Eval",
                   errors=("400", "401", "413", "429"), body=json_body(ref("EvalRequest"))["content"]),
    },
    "/evals/{eval_id}": {
        "get": op("getEval", "One eval.", "Eval", errors=EVAL_ERRORS, params=[EVAL_ID]),
        "post": op("updateEval", "Change its name or metadata.", "Eval", errors=("400", *EVAL_ERRORS),
                   params=[EVAL_ID], body=json_body(obj({"name": STRING, "metadata": {"type": "object"}}))["content"]),
        "delete": op("deleteEval", "Delete it with its runs.", "EvalDeleted", errors=EVAL_ERRORS, params=[EVAL_ID]),
    },
    "/evals/{eval_id}/runs": {
        "get": op("listEvalRuns", "Its runs, newest first.", "EvalRunList", errors=("400", *EVAL_ERRORS),
                  params=[EVAL_ID, *paging(100), ORDER, query("status", STRING, "Only runs of this status.")]),
        "post": op("createEvalRun", "Start a run: a model answers the items (completions), or given answers are "
                   "graded (jsonl).", "EvalRun", errors=("400", *EVAL_ERRORS, "413"), params=[EVAL_ID],
                   body=json_body(ref("EvalRunRequest"))["content"]),
    },
    "/evals/{eval_id}/runs/{run_id}": {
        "get": op("getEvalRun", "One run, with its counts and progress.", "EvalRun", errors=EVAL_ERRORS,
                  params=[EVAL_ID, RUN_ID]),
        "delete": op("deleteEvalRun", "Delete it (a running one is canceled first).", "EvalRunDeleted",
                     errors=EVAL_ERRORS, params=[EVAL_ID, RUN_ID]),
    },
    "/evals/{eval_id}/runs/{run_id}/cancel": {
        "post": op("cancelEvalRun", "Cancel it: at once if queued, within a second if running.", "EvalRun",
                   errors=(*EVAL_ERRORS, "409"), params=[EVAL_ID, RUN_ID]),
    },
    "/evals/{eval_id}/runs/{run_id}/output_items": {
        "get": op("listEvalRunOutputItems", "Its output items: each item's answer and grades.", "EvalOutputItemList",
                  errors=("400", *EVAL_ERRORS), params=[EVAL_ID, RUN_ID, *paging(100), ORDER,
                                                         query("status", STRING, "pass, fail or error.")]),
    },
    "/evals/{eval_id}/runs/{run_id}/output_items/{item_id}": {
        "get": op("getEvalRunOutputItem", "One output item.", "EvalOutputItem", errors=EVAL_ERRORS,
                  params=[EVAL_ID, RUN_ID, path_param("item_id", "outputitem_<number>")]),
    },
}  # fmt: skip


def document(server_url: str = "/v1") -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Developer API (OpenAI-compatible)",
            "version": "1.0.0",
            "description": "Models, chat completions, files, fine-tuning and evals in OpenAI's shapes: the official "
            "SDKs work with this base URL and a key (see docs/api.md).",
        },
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key, sk-..."}},
            "schemas": SCHEMAS,
        },
    }


@require_GET
def openapi_json(request):
    return JsonResponse(document(request.build_absolute_uri("/v1")))
