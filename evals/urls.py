from django.urls import path

from . import views

app_name = "evals"

urlpatterns = [
    path("", views.index, name="index"),
    path("<int:eval_id>/", views.eval_detail, name="eval"),
    path("<int:eval_id>/delete/", views.delete_eval, name="delete"),
    path("<int:eval_id>/runs/new/", views.run_again, name="run_again"),
    path("<int:eval_id>/compare/", views.compare_pick, name="compare_pick"),
    path("for-job/<int:job_id>/", views.for_job, name="for_job"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("runs/<int:run_id>/status.json", views.run_status, name="run_status"),
    path("runs/<int:run_id>/cancel/", views.cancel_run, name="cancel"),
    path("runs/<int:run_id>/export.csv", views.export_csv, name="export_csv"),
    path("runs/<int:run_id>/export.jsonl", views.export_jsonl, name="export_jsonl"),
    path("compare/<int:run_a>/<int:run_b>/", views.compare, name="compare"),
    path("compare/<int:run_a>/<int:run_b>/vote/", views.vote, name="vote"),
]
