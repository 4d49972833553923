"""A Flask app behind `TollwayWSGIMiddleware`, for ``waitress tests.apps.wsgi_app:app``.

Environment: ``TOLLWAY_APP_POLICY`` (a policy file) and ``TOLLWAY_APP_STORE`` (a store URL;
the policy's own when unset). ``GET /v1/geocode`` is limited by the policy; ``/health`` is
exempt.
"""

from __future__ import annotations

import os

import flask

from tollway import Tollway
from tollway.wsgi import TollwayWSGIMiddleware

tollway = Tollway.from_file(
    os.environ["TOLLWAY_APP_POLICY"], os.environ.get("TOLLWAY_APP_STORE") or None
)

app = flask.Flask(__name__)


@app.get("/v1/geocode")
def geocode() -> str:
    return "ok"


@app.get("/health")
def health() -> str:
    return "up"


app.wsgi_app = TollwayWSGIMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, tollway=tollway, exempt=["/health"]
)
