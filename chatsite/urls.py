from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from api import pages as api_pages
from chat import monitoring
from chatsite.forms import ThrottledAdminLoginForm
from chatsite.views import LoginView

# Failed logins are throttled on the admin login page too (chatsite/loginthrottle.py).
admin.site.login_form = ThrottledAdminLoginForm

urlpatterns = [
    path("admin/metrics/", monitoring.admin_metrics, name="admin_metrics"),
    path("admin/dashboard/", include("dashboard.urls")),
    path("admin/", admin.site.urls),
    path("metrics", monitoring.prometheus, name="metrics"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("finetune/", include("finetuning.urls")),
    path("evals/", include("evals.urls")),
    path("v1/", include("api.urls")),
    path("settings/api-keys/", api_pages.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", api_pages.revoke_key, name="api_key_revoke"),
    path("", include("chat.urls")),
]
