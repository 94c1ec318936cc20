"""Content-Security-Policy header on every HTML response (the policy is settings.CONTENT_SECURITY_POLICY).

Django's SecurityMiddleware sends the other security headers (HSTS, nosniff, Referrer-Policy,
Cross-Origin-Opener-Policy); Django 5.2 has no CSP support of its own.
"""

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Adds the policy to HTML responses that do not carry one already (sync and async)."""

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        policy = settings.CONTENT_SECURITY_POLICY
        if policy and "Content-Security-Policy" not in response:
            if response.get("Content-Type", "").startswith("text/html"):
                response["Content-Security-Policy"] = policy
        return response
