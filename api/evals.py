"""/v1/evals: OpenAI's Evals API over the studio's evals (evals/), so the official SDK's
`client.evals` works unchanged. Ids are `eval_<n>`, `evalrun_<n>` and `outputitem_<n>`; another
user's ids answer 404 like unknown ones. What is supported, and the extensions (the exact_match
and f1 metrics, a run's `progress`), are in docs/evals.md."""

from __future__ import annotations

from django.http import JsonResponse
from django.urls import reverse

from evals import actions, definitions, runs, sources
from evals import files as eval_files
from evals.errors import EvalError
from evals.models import Eval, OutputItem, Run
from finetuning.models import Dataset

from . import pagination
from .auth import api_view
from .completions import parse_body
from .errors import ApiError, not_found
from .files import check_may_finetune, owned_file
from .fine_tuning import owned_job, timestamp

EVAL_PREFIX, RUN_PREFIX, ITEM_PREFIX = "eval_", "evalrun_", "outputitem_"
CREATE_BODY = {"name", "metadata", "data_source_config", "testing_criteria"}
UPDATE_BODY = {"name", "metadata"}
RUN_BODY = {"name", "metadata", "data_source"}


def _refuse_unknown(body: dict, allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"Unknown parameter {name!r}; use {', '.join(sorted(allowed))}.", param=name)


def _bad(exc: EvalError) -> ApiError:
    return ApiError(400, exc.message, param=exc.param)


# --- objects -------------------------------------------------------------------------------------
def eval_object(evaluation: Eval) -> dict:
    return {
        "id": f"{EVAL_PREFIX}{evaluation.pk}",
        "object": "eval",
        "created_at": timestamp(evaluation.created_at),
        "name": evaluation.name,
        "metadata": evaluation.metadata or None,
        "data_source_config": {
            "type": "custom",
            "schema": definitions.schema_object(evaluation.item_schema, evaluation.include_sample_schema),
        },
        "testing_criteria": evaluation.testing_criteria,
    }


def run_object(run: Run, request) -> dict:
    summary = runs.counts(run)
    usage = summary.pop("usage")
    error = {"code": run.error_code, "message": run.error_message} if run.error_code else None
    return {
        "id": f"{RUN_PREFIX}{run.pk}",
        "object": "eval.run",
        "eval_id": f"{EVAL_PREFIX}{run.eval_id}",
        "created_at": timestamp(run.created_at),
        "name": run.name,
        "model": run.model_name,
        "status": run.status,
        "metadata": run.metadata or None,
        "data_source": run.data_source,
        "error": error,
        "report_url": request.build_absolute_uri(reverse("admin:evals_run_change", args=[run.pk])),
        "per_model_usage": [
            {
                "model_name": run.model_name,
                "invocation_count": usage["invocation_count"],
                "prompt_tokens": usage["prompt_tokens"],
                "completion_tokens": usage["completion_tokens"],
                "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
                "cached_tokens": 0,
            }
        ]
        if run.model_name
        else [],
        **summary,
    }


def item_object(item: OutputItem, run: Run) -> dict:
    status = item.status or ("skipped" if item.state == OutputItem.State.SKIPPED else "pending")
    error = (
        {"code": item.finish_reason or "error", "message": item.error} if item.error else {"code": "", "message": ""}
    )
    sampling = run.sampling or {}
    return {
        "id": f"{ITEM_PREFIX}{item.pk}",
        "object": "eval.run.output_item",
        "created_at": timestamp(item.created_at),
        "eval_id": f"{EVAL_PREFIX}{run.eval_id}",
        "run_id": f"{RUN_PREFIX}{run.pk}",
        "status": status,
        "datasource_item_id": item.index,
        "datasource_item": item.item,
        "results": item.results,
        "sample": {
            "input": item.messages,
            "output": [{"role": "assistant", "content": item.output_text}]
            if item.state in (OutputItem.State.ANSWERED, OutputItem.State.GRADED)
            else [],
            "finish_reason": item.finish_reason,
            "model": run.model_name,
            "usage": {
                "prompt_tokens": item.prompt_tokens,
                "completion_tokens": item.completion_tokens,
                "total_tokens": item.prompt_tokens + item.completion_tokens,
                "cached_tokens": 0,
            },
            "error": error,
            "temperature": sampling.get("temperature", 0.0),
            "top_p": sampling.get("top_p", 1.0),
            "max_completion_tokens": sampling.get("max_tokens", 0),
            "seed": sampling.get("seed") or 0,
        },
    }


# --- lookups -------------------------------------------------------------------------------------
def _owned_eval(user, eval_id) -> Eval:
    number = pagination.id_number(eval_id, EVAL_PREFIX)
    evaluation = Eval.objects.filter(owner=user, pk=number).first() if number is not None else None
    if evaluation is None:
        raise not_found("eval", eval_id)
    return evaluation


def _owned_run(user, eval_id, run_id) -> Run:
    evaluation = _owned_eval(user, eval_id)
    number = pagination.id_number(run_id, RUN_PREFIX)
    run = evaluation.runs.select_related("eval").filter(pk=number).first() if number is not None else None
    if run is None:
        raise not_found("run", run_id)
    return run


def _owned_rows(user, source: dict) -> list[dict]:
    """The items of a file_id source (an evals file: its rows; a fine-tuning file: every chat row) or a fine_tuning_job source
    (the rows that job held out), of the user's own files and jobs; 404 like the files API. A
    logs source replays the conversation logs the user may read (evals/replay.py)."""
    if source["type"] == "logs":
        return actions.replay_rows(user, source)
    if source["type"] == "file_id":
        dataset = owned_file(user, source["id"], param="data_source.source.id", purpose=None)
        if dataset.purpose == Dataset.Purpose.EVALS:
            return eval_files.content(dataset)
        return sources.dataset_content(dataset)
    check_may_finetune(user)
    try:
        job = owned_job(user, source["id"])
    except ApiError as exc:
        exc.param = "data_source.source.id"
        raise
    return sources.dataset_content(job.dataset, job=job)


# --- do ------------------------------------------------------------------------------------------
def create_eval(user, body: dict) -> Eval:
    _refuse_unknown(body, CREATE_BODY)
    try:
        return actions.create_eval(
            user, body.get("name"), body.get("data_source_config"), body.get("testing_criteria"), body.get("metadata")
        )
    except EvalError as exc:
        raise _bad(exc) from exc


def update_eval(evaluation: Eval, body: dict) -> Eval:
    _refuse_unknown(body, UPDATE_BODY)
    try:
        if "name" in body:
            evaluation.name = definitions.check_name(body["name"])
        if "metadata" in body:
            evaluation.metadata = definitions.check_metadata(body["metadata"])
    except EvalError as exc:
        raise _bad(exc) from exc
    evaluation.save(update_fields=["name", "metadata"])
    return evaluation


def create_run(user, evaluation: Eval, body: dict) -> Run:
    _refuse_unknown(body, RUN_BODY)
    try:
        actions.check_room(user, 1)
        return actions.start_run(
            user, evaluation, body.get("data_source"), name=definitions.check_name(body.get("name")),
            metadata=definitions.check_metadata(body.get("metadata")), resolve=lambda given: _owned_rows(user, given),
        )  # fmt: skip
    except actions.TooManyRuns as exc:
        raise ApiError(429, exc.message, code="too_many_runs") from exc
    except actions.UnknownModel as exc:
        raise not_found("model", (body.get("data_source") or {}).get("model"), param=exc.param) from exc
    except EvalError as exc:
        raise _bad(exc) from exc


# --- the views -----------------------------------------------------------------------------------
@api_view("GET", "POST", scope="evals")
def evals_view(request):
    if request.method == "POST":
        return JsonResponse(eval_object(create_eval(request.user, parse_body(request))))
    page = pagination.page_request(request, EVAL_PREFIX, default_limit=20, max_limit=100, ordered=True)
    rows, has_more = pagination.paginate(Eval.objects.filter(owner=request.user), page)
    return JsonResponse(pagination.list_body([eval_object(e) for e in rows], has_more))


@api_view("GET", "POST", "DELETE", scope="evals")
def eval_view(request, eval_id: str):
    evaluation = _owned_eval(request.user, eval_id)
    if request.method == "POST":
        return JsonResponse(eval_object(update_eval(evaluation, parse_body(request))))
    if request.method == "DELETE":
        actions.delete_eval(evaluation)
        return JsonResponse({"object": "eval.deleted", "deleted": True, "eval_id": eval_id})
    return JsonResponse(eval_object(evaluation))


@api_view("GET", "POST", scope="evals")
def runs_view(request, eval_id: str):
    evaluation = _owned_eval(request.user, eval_id)
    if request.method == "POST":
        return JsonResponse(run_object(create_run(request.user, evaluation, parse_body(request)), request))
    page = pagination.page_request(request, RUN_PREFIX, default_limit=20, max_limit=100, ordered=True)
    rows = evaluation.runs.select_related("eval")
    status = request.GET.get("status")
    if status:
        if status not in Run.Status.values:
            raise ApiError(400, f"status must be one of {', '.join(Run.Status.values)}.", param="status")
        rows = rows.filter(status=status)
    rows, has_more = pagination.paginate(rows, page)
    return JsonResponse(pagination.list_body([run_object(r, request) for r in rows], has_more))


@api_view("GET", "DELETE", scope="evals")
def run_view(request, eval_id: str, run_id: str):
    run = _owned_run(request.user, eval_id, run_id)
    if request.method == "DELETE":
        runs.delete(run)
        return JsonResponse({"object": "eval.run.deleted", "deleted": True, "run_id": run_id})
    return JsonResponse(run_object(run, request))


@api_view("POST", scope="evals")
def run_cancel_view(request, eval_id: str, run_id: str):
    run = _owned_run(request.user, eval_id, run_id)
    if run.is_finished:
        raise ApiError(409, f"The run has already ended ({run.status}); there is nothing to cancel.",
                       code="run_finished")  # fmt: skip
    return JsonResponse(run_object(runs.request_cancel(run), request))


@api_view("GET", scope="evals")
def output_items_view(request, eval_id: str, run_id: str):
    run = _owned_run(request.user, eval_id, run_id)
    page = pagination.page_request(request, ITEM_PREFIX, default_limit=20, max_limit=100, ordered=True)
    rows = run.items.all()
    status = request.GET.get("status")
    if status:
        if status not in ("pass", "fail", "error"):
            raise ApiError(400, "status must be pass, fail or error.", param="status")
        rows = rows.filter(status=status)
    rows, has_more = pagination.paginate(rows, page)
    return JsonResponse(pagination.list_body([item_object(i, run) for i in rows], has_more))


@api_view("GET", scope="evals")
def output_item_view(request, eval_id: str, run_id: str, item_id: str):
    run = _owned_run(request.user, eval_id, run_id)
    number = pagination.id_number(item_id, ITEM_PREFIX)
    item = run.items.filter(pk=number).first() if number is not None else None
    if item is None:
        raise not_found("output item", item_id)
    return JsonResponse(item_object(item, run))
