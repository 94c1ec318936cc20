"""What the Evaluations pages (evals/views.py) and the API (api/evals.py) do: make an eval and its
runs, run an eval again on another model, delete an eval, keep a person's vote on the compare
page. Through evals/definitions.py for the eval, evals/sources.py `parse` and `resolve_sampling`
and evals/runs.py `create` for a run. A refusal raises EvalError (or one of its kinds below),
whose message says what to change."""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import transaction

from inference.models import LanguageModel

from . import definitions, presets, replay, runs, sources
from .errors import EvalError
from .models import Eval, Preference, Run


class TooManyRuns(EvalError):
    """The user's runs queued or running are at EVALS_MAX_ACTIVE_RUNS (the API answers 429)."""


class UnknownModel(EvalError):
    """No model of that id the user may use (the API answers 404, as for an unknown one)."""


def check_room(user, count: int) -> None:
    """The user may have EVALS_MAX_ACTIVE_RUNS runs queued or running."""
    active, limit = runs.active_runs(user), settings.EVALS_MAX_ACTIVE_RUNS
    if active + count > limit:
        runs_word = "run" if count == 1 else f"{count} runs"
        raise TooManyRuns(
            f"You have {active} evaluation run(s) queued or running, and may have {limit} at once: this "
            f"{runs_word} would pass the limit. Wait for one to end, or cancel one.",
            "runs",
        )


def create_eval(user, name, data_source_config, testing_criteria, metadata=None) -> Eval:
    """Check the eval (a `custom` data source config, its graders) and store it."""
    schema, include_sample = definitions.check_data_source_config(data_source_config)
    criteria = definitions.check_testing_criteria(testing_criteria, schema)
    return Eval.objects.create(
        owner=user, name=definitions.check_name(name), metadata=definitions.check_metadata(metadata),
        item_schema=schema, include_sample_schema=include_sample, testing_criteria=criteria,
    )  # fmt: skip


def replay_rows(user, source: dict) -> list[dict]:
    """The rows of a logs source (evals/replay.py); other sources need their owner's lookup."""
    if source.get("type") != "logs":
        raise EvalError(f"A {source.get('type')} source cannot be used here.", "data_source.source")
    return replay.rows(user, source)


def completions_source(model: str, template: list[dict] | None, *, temperature: float, max_new_tokens: int,
                       source: dict) -> dict:  # fmt: skip
    """A `completions` data source as the API takes it; with no template, each item's own
    `messages` are the prompt (an item_reference)."""
    if template is None:
        input_messages = {"type": "item_reference", "item_reference": "item.messages"}
    else:
        input_messages = {"type": "template", "template": template}
    return {
        "type": "completions",
        "model": model,
        "input_messages": input_messages,
        "sampling_params": {"temperature": temperature, "max_completion_tokens": max_new_tokens},
        "source": source,
    }


def start_run(user, evaluation: Eval, data_source: dict, *, name: str = "", metadata: dict | None = None,
              resolve=None) -> Run:  # fmt: skip
    """Check the data source against the eval and make the run (queued once committed).
    `resolve` gives the rows of a file_id or fine_tuning_job source (see sources.parse); a logs
    source replays what `user` may read of the logs (evals/replay.py)."""
    if resolve is None:
        resolve = partial(replay_rows, user)
    source = sources.parse(data_source, evaluation.item_schema, evaluation.include_sample_schema, resolve=resolve)
    if not source.model and any(g["type"] == "perplexity" for g in evaluation.testing_criteria):
        raise EvalError("This eval has a perplexity grader, which scores the reference under the run's model: use a "
                        "completions data source with a model.", "data_source.type")  # fmt: skip
    model, sampling = None, {}
    if source.model:
        model = LanguageModel.objects.usable_by(user).filter(slug=source.model).first()
        if model is None:
            raise UnknownModel(f"There is no model {source.model!r} that you may use.", "data_source.model")
        sampling = sources.resolve_sampling(source.sampling_params, model)
    return runs.create(evaluation, user, source, model=model, sampling=sampling, name=name, metadata=metadata or {})


def pair(first: Run, second: Run) -> None:
    """Mark two runs made together as each other's counterpart on the compare page."""
    for run, other in ((first, second), (second, first)):
        run.metadata = {**run.metadata, "compare_with": str(other.pk)}
        run.save(update_fields=["metadata"])


@transaction.atomic
def create_with_runs(user, *, name: str, item_schema: dict, testing_criteria: list[dict], template: list[dict] | None,
                     temperature: float, max_new_tokens: int, source: dict, models: list[str]) -> Eval:  # fmt: skip
    """The eval and one run per model (two are paired for the compare page); all or nothing."""
    check_room(user, len(models))
    evaluation = create_eval(user, name, {"type": "custom", "item_schema": item_schema}, testing_criteria)
    made = [
        start_run(user, evaluation, completions_source(
            slug, template, temperature=temperature, max_new_tokens=max_new_tokens, source=source))
        for slug in models
    ]  # fmt: skip
    if len(made) == 2:
        pair(*made)
    return evaluation


def base_run(evaluation: Eval) -> Run | None:
    """The run whose prompt and settings a new run copies: the latest one a model answered."""
    return evaluation.runs.filter(data_source__type="completions").order_by("-pk").first()


@transaction.atomic
def run_again(user, evaluation: Eval, model: str) -> Run:
    """A new run of the eval's items (those of its latest run) on `model`, with the prompt and
    settings of its latest completions run (the default prompt when it has none)."""
    latest = evaluation.runs.order_by("-pk").first()
    if latest is None:
        raise EvalError("This evaluation has no run whose items could be answered again.", "runs")
    check_room(user, 1)
    content = [{"item": item} for item in latest.items.order_by("index").values_list("item", flat=True)]
    base = base_run(evaluation)
    if base is not None:
        data_source = {**base.data_source, "model": model, "source": {"type": "file_content", "content": content}}
    else:
        data_source = completions_source(
            model, presets.default_template(), temperature=presets.DEFAULT_TEMPERATURE,
            max_new_tokens=presets.DEFAULT_MAX_NEW_TOKENS, source={"type": "file_content", "content": content},
        )  # fmt: skip
    return start_run(user, evaluation, data_source)


def delete_eval(evaluation: Eval) -> None:
    """The eval and its runs; a run still going is canceled first (as the API's DELETE does)."""
    with transaction.atomic():
        for run in evaluation.runs.exclude(status__in=Run.FINISHED):
            runs.delete(run)
        evaluation.delete()


FLIP = {"a": "b", "b": "a", "tie": "tie"}


def canonical(run_a: Run, run_b: Run) -> tuple[Run, Run, bool]:
    """The pair in stored order (smaller id first), and whether the page's order is flipped."""
    return (run_a, run_b, False) if run_a.pk < run_b.pk else (run_b, run_a, True)


def vote(user, run_a: Run, run_b: Run, index: int, choice: str) -> Preference:
    """Keep (or change) the person's verdict on item `index`, `choice` as the page showed A and B."""
    if choice not in Preference.Choice.values:
        raise EvalError("Choose A, B or tie.", "choice")
    if not run_a.items.filter(index=index).exists() or not run_b.items.filter(index=index).exists():
        raise EvalError(f"Both runs need an item {index}.", "index")
    first, second, flipped = canonical(run_a, run_b)
    preference, _ = Preference.objects.update_or_create(
        run_a=first, run_b=second, index=index, user=user,
        defaults={"choice": FLIP[choice] if flipped else choice},
    )  # fmt: skip
    return preference


def votes(user, run_a: Run, run_b: Run) -> dict[int, str]:
    """{index: "a" | "b" | "tie"} of the person's votes, as the page shows A and B."""
    first, second, flipped = canonical(run_a, run_b)
    rows = Preference.objects.filter(run_a=first, run_b=second, user=user).values_list("index", "choice")
    return {index: FLIP[choice] if flipped else choice for index, choice in rows}
