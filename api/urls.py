from django.urls import path

from . import completions, evals, files, fine_tuning, openapi, views

urlpatterns = [
    path("models", views.list_models, name="api_models"),
    path("models/<str:model_id>", views.retrieve_model, name="api_model"),
    path("chat/completions", completions.chat_completions, name="api_chat_completions"),
    path("files", files.files, name="api_files"),
    path("files/<str:file_id>", files.file_detail, name="api_file"),
    path("files/<str:file_id>/content", files.file_content, name="api_file_content"),
    path("fine_tuning/jobs", fine_tuning.fine_tuning_jobs, name="api_fine_tuning_jobs"),
    path("fine_tuning/jobs/<str:job_id>", fine_tuning.fine_tuning_job, name="api_fine_tuning_job"),
    path("fine_tuning/jobs/<str:job_id>/events", fine_tuning.fine_tuning_job_events, name="api_fine_tuning_events"),
    path(
        "fine_tuning/jobs/<str:job_id>/checkpoints",
        fine_tuning.fine_tuning_job_checkpoints,
        name="api_fine_tuning_checkpoints",
    ),
    path("fine_tuning/jobs/<str:job_id>/cancel", fine_tuning.fine_tuning_job_cancel, name="api_fine_tuning_cancel"),
    path("evals", evals.evals_view, name="api_evals"),
    path("evals/<str:eval_id>", evals.eval_view, name="api_eval"),
    path("evals/<str:eval_id>/runs", evals.runs_view, name="api_eval_runs"),
    path("evals/<str:eval_id>/runs/<str:run_id>", evals.run_view, name="api_eval_run"),
    path("evals/<str:eval_id>/runs/<str:run_id>/cancel", evals.run_cancel_view, name="api_eval_run_cancel"),
    path("evals/<str:eval_id>/runs/<str:run_id>/output_items", evals.output_items_view, name="api_eval_output_items"),
    path(
        "evals/<str:eval_id>/runs/<str:run_id>/output_items/<str:item_id>",
        evals.output_item_view,
        name="api_eval_output_item",
    ),
    path("openapi.json", openapi.openapi_json, name="api_openapi"),
]
