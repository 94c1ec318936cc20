from django.urls import path

from . import views

app_name = "finetuning"

urlpatterns = [
    path("", views.studio, name="studio"),
    path("compare/", views.compare, name="compare"),
    path("datasets/upload/", views.upload, name="upload"),
    path("datasets/keep/", views.keep_good_rows, name="keep"),
    path("datasets/example.jsonl", views.example_dataset, name="example"),
    path("datasets/use-example/", views.use_example, name="use_example"),
    path("datasets/<int:dataset_id>/", views.dataset_detail, name="dataset"),
    path("jobs/new/", views.new_job, name="new_job"),
    path("jobs/<int:job_id>/", views.job_detail, name="job"),
    path("jobs/<int:job_id>/progress.json", views.job_progress, name="job_progress"),
    path("jobs/<int:job_id>/cancel/", views.cancel_job, name="cancel_job"),
    path("jobs/<int:job_id>/files/<path:name>", views.job_file, name="job_file"),
]
