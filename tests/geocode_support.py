"""Shared pieces of the geocoding tests: policies of stub providers, TOML, adapters, waiting.

A policy here is a plain dict (what `Tollway` takes, and what a spawned process can be
handed); `to_toml` writes the same dict as a policy file for the ``tollway`` command.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from tollway import Tollway
from tollway.outbound.geocode.adapters import GeocodeAdapter
from tollway.outbound.geocode.geocoder import adapters_from_policy
from tollway.outbound.geocode.stubs import StubServer
from tollway.outbound.geocode.stubs.dialects import Reply

KEY_ENV = {
    "opencage": "TOLLWAY_TEST_OPENCAGE_KEY",
    "google": "TOLLWAY_TEST_GOOGLE_KEY",
    "here": "TOLLWAY_TEST_HERE_KEY",
    "mapbox": "TOLLWAY_TEST_MAPBOX_KEY",
}
"""The environment variable holding each kind's API key (nominatim takes none)."""
ENV = {name: f"test-key-{kind}" for kind, name in KEY_ENV.items()}
"""Every key variable, set: pass as ``env=`` or put in a child's environment."""


def provider(
    stub: StubServer, *, price: str, limits: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A provider table calling ``stub``: its kind, domain, http, a key variable, limits."""
    doc: dict[str, Any] = {
        "kind": stub.kind,
        "domain": stub.domain,
        "scheme": "http",
        "price": price,
        "limits": limits,
    }
    if stub.kind != "nominatim":
        doc["api_key_env"] = KEY_ENV[stub.kind]
    doc.update(extra)
    return doc


def policy(
    providers: Mapping[str, dict[str, Any]],
    *,
    route: list[str] | None = None,
    name: str = "geocoding",
    timezone: str | None = None,
    store: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A policy with ``providers`` and one route over them (default: in the given order)."""
    doc: dict[str, Any] = {
        "providers": dict(providers),
        "routes": {name: {"providers": list(route if route is not None else providers)}},
    }
    if timezone is not None:
        doc["defaults"] = {"timezone": timezone}
    if store is not None:
        doc["store"] = dict(store)
    return doc


def adapters(tw: Tollway, route: str = "geocoding") -> dict[str, GeocodeAdapter]:
    """The adapters of ``route``'s providers, with the test keys (not the real environment)."""
    return adapters_from_policy(tw.policy, tw.policy.routes[route].providers, env=ENV)


# ------------------------------------------------------------------------------------ TOML


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """``doc`` (two levels of tables at most, as a policy has) as TOML text."""
    lines: list[str] = []

    def table(path: str, body: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in body.items() if not isinstance(v, Mapping)}
        nested = {k: v for k, v in body.items() if isinstance(v, Mapping)}
        if plain or not nested:
            lines.append(f"[{path}]")
            lines.extend(f"{k} = {_value(v)}" for k, v in plain.items())
            lines.append("")
        for key, sub in nested.items():
            table(f"{path}.{key}", sub)

    for key, body in doc.items():
        table(key, body)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ waiting


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` (every millisecond or so) until it holds; AssertionError after
    ``timeout`` seconds. For things that happen in another thread or process, never for
    time windows (those move on a `FakeClock`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.001)


class GatedStub(StubServer):
    """A `StubServer` whose answers can be held back at will, to catch callers mid-call.

    While the gate is closed, every request is decided as usual (counted in ``calls``, and in
    ``served`` when answered normally: the provider has billed it) and then its answer is
    held until the gate opens; ``held`` counts those requests. Opening the gate lets the held
    answers go (to whoever still listens)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self._gate = threading.Event()
        self._gate.set()
        self._held_lock = threading.Lock()
        self._held = 0
        self._waiting = 0

    @property
    def held(self) -> int:
        with self._held_lock:
            return self._held

    def close_gate(self) -> None:
        with self._held_lock:
            self._held = 0
            self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    @property
    def waiting(self) -> int:
        """Requests held at the gate right now (their connections stay open)."""
        with self._held_lock:
            return self._waiting

    def handle(self, target: str) -> tuple[Reply, float]:
        reply = super().handle(target)
        if not self._gate.is_set():
            with self._held_lock:
                self._held += 1
                self._waiting += 1
            try:
                self._gate.wait(timeout=60)
            finally:
                with self._held_lock:
                    self._waiting -= 1
        return reply
