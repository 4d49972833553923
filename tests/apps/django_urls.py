"""The URLconf (and views) of the Django app in ``tests/test_http_frameworks.py``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.http import require_GET


@require_GET
def geocode(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("up", content_type="text/plain")


urlpatterns = [
    path("v1/geocode", geocode),
    path("health", health),
]
