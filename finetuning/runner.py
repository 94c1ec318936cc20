"""One job from claim to result, in the Celery worker: check the data, measure the base model,
train, measure the tuned model, save it and register it as a model its owner can chat with."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils.text import slugify

from inference.backends.llamacpp import adapter_gguf
from inference.loading import ModelLoadError, ModelSpec, gguf_path
from inference.models import LanguageModel
from inference.sampling import SAMPLING_FIELDS

from . import evaluation, gguf_files, jobs, signals, training
from .datastore import file_sha256
from .models import Job

logger = logging.getLogger(__name__)


ADAPTER_DIR = "adapter"


@dataclass
class Exported:
    """What export() wrote: the model's folder, its GGUF file name and adapter folder ("" if none)."""

    folder: Path
    gguf_file: str = ""
    adapter: str = ""


class JobFailed(Exception):
    """A reason to end the job failed, written for the person who started it."""


def run(job_id: int, worker: str) -> str | None:
    """Run the job if this worker may (see jobs.claim); returns its final state, or None."""
    job = jobs.claim(job_id, worker)
    if job is None:
        return None
    try:
        with jobs.Heartbeat(job):
            _run(job)
    except JobFailed as exc:
        jobs.finish(job, Job.State.FAILED, f"Failed: {exc}", error=str(exc))
    except Exception as exc:  # any other error ends the job failed, never stuck "running"
        logger.exception("Fine-tuning job %s failed", job.pk)
        reason = f"{type(exc).__name__}: {exc}"[:500]
        jobs.finish(job, Job.State.FAILED, f"Failed: {reason}", error=reason)
    job.refresh_from_db()
    return job.state


def _run(job: Job) -> None:
    hp = job.hyperparameters
    dataset = job.dataset
    if not dataset.path.is_file():
        raise JobFailed("The dataset's file is missing on this worker (FINETUNE_DIR must be shared with the site).")
    if file_sha256(dataset.path) != dataset.sha256:
        raise JobFailed("The dataset's file changed since it was uploaded; upload it again.")
    rows = training.read_rows(dataset.path)
    train_rows, eval_rows = training.split_rows(rows, hp["validation_split"], hp["seed"])
    job.log(f"{len(train_rows)} training rows, {len(eval_rows)} held out for validation.")
    model, tokenizer, device, bf16 = training.load_base(job.base_model)
    job.log(f"Loaded {job.base_model.name} on {device} ({'bf16 autocast' if bf16 else 'float32'}).")
    prompts = evaluation.sample_prompts(eval_rows or train_rows)
    if "base" not in job.evaluation:  # measured once, kept across resumes
        base_probe, reused = evaluation.base_probe(
            job.base_model, model, tokenizer, progress=_phase(job, "Base model: general-knowledge probe")
        )
        _phase(job, "Base model: held-out loss and sample answers")(0, 0)
        job.evaluation = {"base": evaluation.measure(model, tokenizer, eval_rows, prompts, probe_result=base_probe)}
        job.phase = {}
        job.save(update_fields=["evaluation", "phase"])
        job.log(_probe_line("Base model", job.evaluation["base"]) + (" (measured before on this model version)"
                                                                     if reused else ""))  # fmt: skip

    jobs.set_state(job, Job.State.RUNNING)
    outcome = training.train(job, model, tokenizer, train_rows, eval_rows, device, bf16)
    if outcome.cancelled:
        jobs.finish(job, Job.State.CANCELLED, "Cancelled while training; no model was registered.")
        return
    if outcome.tokens_per_s:
        job.tokens_per_s = outcome.tokens_per_s
        job.save(update_fields=["tokens_per_s"])
    job.log(f"Trained in {outcome.train_runtime_s:.0f} s ({outcome.tokens_per_s or 0:.0f} tokens/s).")

    jobs.set_state(job, Job.State.EVALUATING)
    _phase(job, "Tuned model: held-out loss and sample answers")(0, 0)
    tuned = evaluation.measure(
        outcome.model, tokenizer, eval_rows, prompts, progress=_phase(job, "Tuned model: general-knowledge probe")
    )
    job.evaluation = {**job.evaluation, "tuned": tuned}
    job.evaluation["comparison"] = evaluation.compare(job.evaluation["base"], tuned, prompts)
    job.phase = {}
    job.save(update_fields=["evaluation", "phase"])
    job.log(_probe_line("Tuned model", tuned))
    if job.evaluation["comparison"]["forgot_too_much"]:
        job.log(
            f"Warning: the tuned model lost {job.evaluation['comparison']['probe']['lost_share']:.0%} of what the "
            "base model answered right in the general-knowledge probe.",
            level="warning",
        )
    if Job.objects.filter(pk=job.pk, cancel_requested=True).exists():
        jobs.finish(job, Job.State.CANCELLED, "Cancelled during evaluation; no model was registered.")
        return
    register(job, export(job, outcome.model, tokenizer))


def _phase(job: Job, name: str):
    """A progress(done, total) callback that shows the phase under way on the job's page."""

    def progress(done: int, total: int) -> None:
        Job.objects.filter(pk=job.pk).update(phase={"name": name, "done": done, "total": total})

    return progress


def _probe_line(who: str, measured: dict) -> str:
    probe = measured["probe"]
    loss = measured["eval_loss"]
    loss_text = f", validation loss {loss:.3f}" if loss is not None else ""
    return f"{who}: general-knowledge probe {probe['correct']}/{probe['total']}{loss_text}."


def model_slug(job: Job) -> str:
    """The tuned model's id (and its folder's name under MODEL_DIR/tuned): the job's name and
    number. One that another model already has (its id, or its folder) gets a suffix: a job never
    takes over an existing model, however it is named; its own row from an earlier try is kept."""
    stem = f"{slugify(job.name)[:60] or 'tuned'}-ft{job.pk}"
    slug, n = stem, 1
    while _taken(slug, job):
        n += 1
        slug = f"{stem}-{n}"
    return slug


def _taken(slug: str, job: Job) -> bool:
    rows = LanguageModel.objects.filter(Q(slug=slug) | Q(location=f"tuned/{slug}"))
    return any((row.lineage or {}).get("job") != job.pk for row in rows)


def export(job: Job, model, tokenizer) -> Exported:
    """The tuned model as a self-contained folder under MODEL_DIR/tuned: the merged weights
    (safetensors, tokenizer, chat template); for LoRA, the adapter in `adapter/` (served over the
    base); and, when the base has a GGUF file, the same two for llama.cpp (a merged GGUF for
    llama.cpp, Ollama or LM Studio, and `adapter/adapter.gguf`). Written to a temporary folder
    and renamed into place."""
    slug = model_slug(job)
    target = Path(settings.MODEL_DIR) / "tuned" / slug
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    exported = Exported(folder=target)
    try:
        if job.method == Job.Method.LORA:
            model.save_pretrained(str(tmp / ADAPTER_DIR))
            exported.adapter = ADAPTER_DIR
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        exported.gguf_file = _export_gguf(job, model, tokenizer, tmp, slug)
        if target.exists():  # an earlier attempt got this far: replace it
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    job.log(f"Saved the tuned model to {target.relative_to(settings.MODEL_DIR)} in MODEL_DIR.")
    return exported


def _export_gguf(job: Job, merged, tokenizer, folder: Path, slug: str) -> str:
    """GGUF copies for llama.cpp when the base has a GGUF file; "" (and a log line) otherwise."""
    try:
        base_gguf = gguf_path(ModelSpec.of(job.base_model))
    except ModelLoadError as exc:
        base_gguf = None
        job.log(f"No GGUF export: {exc}", level="warning")
    if base_gguf is None:
        job.log("No GGUF export: the base model has no GGUF file (llama.cpp serves this model only as GGUF).")
        return ""
    name = f"{slug}.Q8_0.gguf"
    try:
        gguf_files.write_merged(base_gguf, merged.state_dict(), tokenizer.chat_template, job.name, folder / name)
        if job.method == Job.Method.LORA:
            gguf_files.write_lora(base_gguf, folder / ADAPTER_DIR, adapter_gguf(folder / ADAPTER_DIR))
    except gguf_files.GGUFExportError as exc:
        (folder / name).unlink(missing_ok=True)
        job.log(f"No GGUF export: {exc}", level="warning")
        return ""
    job.log(f"Exported {name} (merged, Q8_0, with the chat template it was trained with) for llama.cpp.")
    return name


def register(job: Job, exported: Exported) -> LanguageModel:
    """The tuned model as a row its owner can chat with at once, with its lineage."""
    base = job.base_model
    comparison = job.evaluation.get("comparison", {})
    lineage = {
        "job": job.pk,
        "base": base.slug,
        "dataset": job.dataset.name,
        "dataset_sha256": job.dataset.sha256,
        "dataset_rows": job.dataset.rows,
        "method": job.method,
        "hyperparameters": job.hyperparameters,
        "eval_loss": comparison.get("eval_loss"),
        "probe": {k: v for k, v in comparison.get("probe", {}).items() if k != "lost_examples"},
        "forgot_too_much": comparison.get("forgot_too_much", False),
    }
    copied = (*SAMPLING_FIELDS, "max_tokens", "max_new_tokens_cap", "max_input_tokens", "system_prompt")
    sampling = {name: getattr(base, name) for name in copied}
    with transaction.atomic():
        fields = {
            "name": job.name,
            "source": LanguageModel.Source.LOCAL,
            "location": str(exported.folder.relative_to(settings.MODEL_DIR)),  # MODEL_DIR may differ per host
            "backend": LanguageModel.Backend.AUTO,
            "gguf_file": exported.gguf_file,
            "adapter": exported.adapter,
            "owner": job.owner,
            "base": base,
            "lineage": lineage,
            "enabled": True,
            **sampling,
        }
        slug = model_slug(job)
        model = LanguageModel.objects.filter(slug=slug, lineage__job=job.pk).first()  # an earlier try's row
        if model is None:
            model = LanguageModel.objects.create(slug=slug, **fields)
        else:
            LanguageModel.objects.filter(pk=model.pk).update(**fields)
            model.refresh_from_db()
        job.result_model = model
        job.save(update_fields=["result_model"])
        jobs.finish(job, Job.State.SUCCEEDED, f"Succeeded: the model {model.name!r} is ready in the chat.")
        transaction.on_commit(lambda: signals.job_succeeded.send(sender=Job, job=job, model=model))
    return model
