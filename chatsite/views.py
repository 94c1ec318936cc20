"""The login page: Django's, with the throttled form and a 429 while logins are refused."""

from django.contrib.auth import views as auth_views

from .forms import ThrottledLoginForm


class LoginView(auth_views.LoginView):
    authentication_form = ThrottledLoginForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.retry_after is not None:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response
