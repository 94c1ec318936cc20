"""Login forms (the site's and the admin's) that refuse attempts while login is throttled."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from . import loginthrottle


class ThrottledLoginMixin:
    """Checks the throttle before the password, counts wrong credentials, clears on success."""

    # Seconds until a login may be tried again when this form refused one, else None.
    retry_after: int | None = None

    def clean(self):
        username = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if username is None or not password:
            return super().clean()  # a missing field is already an error; nothing is checked
        ip = loginthrottle.client_ip(self.request)
        self.retry_after = loginthrottle.retry_after(username, ip)
        if self.retry_after is not None:
            raise forms.ValidationError(
                "Too many failed logins. Try again in %(wait)s.",
                code="throttled",
                params={"wait": loginthrottle.describe_wait(self.retry_after)},
            )
        try:
            cleaned_data = super().clean()
        except forms.ValidationError:
            # Wrong credentials, not a right password refused for another reason (an account
            # that is not staff, on the admin login).
            if self.user_cache is None:
                loginthrottle.record_failure(username, ip)
            raise
        loginthrottle.clear_username(username)
        return cleaned_data


class ThrottledLoginForm(ThrottledLoginMixin, AuthenticationForm):
    pass


class ThrottledAdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    pass
