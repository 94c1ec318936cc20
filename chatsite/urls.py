from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat import monitoring
from chatsite.forms import ThrottledAdminLoginForm
from chatsite.views import LoginView

# Failed logins are throttled on the admin login page too (chatsite/loginthrottle.py).
admin.site.login_form = ThrottledAdminLoginForm

urlpatterns = [
    path("admin/metrics/", monitoring.admin_metrics, name="admin_metrics"),
    path("admin/", admin.site.urls),
    path("metrics", monitoring.prometheus, name="metrics"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("finetune/", include("finetuning.urls")),
    path("", include("chat.urls")),
]
