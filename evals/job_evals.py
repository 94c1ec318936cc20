"""Every fine-tuning job ends with an evaluation: once a job succeeded (finetuning.signals
`job_succeeded`), an eval of the rows it held out from training is made, with one run on the tuned
model and one on its base, paired for the compare page (word diffs, win rates, a person's
votes). Graded with BLEU, ROUGE-L, token F1 and exact match against the held-out answers, and the
perplexity of those answers under each model (evals/perplexity.py). The
runs go through the inference service at the background priority, like every eval run. A job
that held nothing out (fewer than 10 rows, or no validation split) gets none: its general-probe
measure (finetuning/evaluation.py) is what it has."""

from __future__ import annotations

import logging

from . import actions
from .errors import EvalError
from .models import Eval

logger = logging.getLogger(__name__)

SCHEMA = {
    "type": "object",
    "properties": {"messages": {"type": "array"}, "answer": {"type": "string"}},
    "required": ["messages", "answer"],
}
CRITERIA = [
    {"type": "text_similarity", "name": name, "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
     "evaluation_metric": metric, "pass_threshold": threshold}
    for name, metric, threshold in (
        ("BLEU ≥ 0.3", "bleu", 0.3), ("ROUGE-L ≥ 0.5", "rouge_l", 0.5), ("token F1 ≥ 0.5", "f1", 0.5),
        ("exact match", "exact_match", 1.0),
    )
] + [{"type": "perplexity", "name": "perplexity ≤ 20", "reference": "{{item.answer}}", "pass_threshold": 20}]  # fmt: skip
MAX_NEW_TOKENS = 256


def for_job(job_id: int) -> Eval | None:
    return Eval.objects.filter(metadata__fine_tuning_job=str(job_id)).order_by("-pk").first()


def evaluate_job(sender=None, *, job, model, **kwargs) -> Eval | None:
    """The held-out eval of a job that succeeded (see the module's docstring); None if it held
    nothing out or the eval could not be made (logged: the job stays succeeded)."""
    from . import sources

    content = sources.dataset_content(job.dataset, job=job)
    if not content:
        return None
    data_source = {
        "type": "completions",
        "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
        "sampling_params": {"temperature": 0, "max_completion_tokens": min(MAX_NEW_TOKENS, model.max_new_tokens_cap)},
        "source": {"type": "fine_tuning_job", "id": f"ftjob-{job.pk}"},
    }
    try:
        evaluation = actions.create_eval(
            job.owner, f"{job.name}: tuned vs base on its held-out rows", {"type": "custom", "item_schema": SCHEMA},
            CRITERIA, {"fine_tuning_job": str(job.pk)},
        )  # fmt: skip
        made = [
            actions.start_run(
                job.owner,
                evaluation,
                {**data_source, "model": slug},
                name=f"{slug} (held-out rows)",
                resolve=lambda _source: content,
            )  # fmt: skip
            for slug in (model.slug, job.base_model.slug)
        ]
    except EvalError as exc:
        logger.warning("No held-out evaluation for job %s: %s", job.pk, exc)
        return None
    actions.pair(*made)
    # Not in the job's log: "Succeeded" stays its last line (the API's newest event); the job page
    # links to the evaluation.
    logger.info("Job %s: held-out evaluation %s queued (%d rows)", job.pk, evaluation.pk, len(content))
    return evaluation
