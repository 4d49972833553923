"""`adapters_from_policy`: one geocoder adapter per provider of a policy, from its client keys.

Every provider is checked before any adapter is built, and every problem is reported at once in
one `ConfigurationError` (a batch that needs three keys learns of all three in one run, not one
run at a time); each problem names its key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from tollway.errors import ConfigurationError
from tollway.outbound.geocode.adapters import ADAPTER_KINDS, GeocodeAdapter, make_adapter
from tollway.outbound.geocode.answers import MAX_ANSWER_BYTES
from tollway.policy.model import Policy

__all__ = ["STUBS_HINT", "adapters_from_policy"]

STUBS_HINT = (
    "against the local stubs any non-empty value works: python -m tollway.outbound.geocode.stubs "
    "--config FILE starts them and prints what to set"
)


def _key_problem(policy: Policy, name: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    """``(what is wrong, what was expected)`` of a provider's kind or key, or None."""
    client = policy.providers[name].client
    where = f"providers.{name}"
    if client.kind is None:
        return (
            f"{where}.kind: missing",
            f"expected the adapter to call it with, one of {', '.join(ADAPTER_KINDS)}",
        )
    if client.kind not in ADAPTER_KINDS:
        return (
            f"{where}.kind: {client.kind!r} is not a geocoder",
            f"expected one of {', '.join(ADAPTER_KINDS)}",
        )
    if client.api_key_env is not None:
        if env.get(client.api_key_env):
            return None
        return (
            f"{where}.api_key_env: the environment variable {client.api_key_env} is not set",
            "expected it to hold the provider's API key",
        )
    if client.kind != "nominatim":
        return (
            f"{where}.api_key_env: missing",
            f"expected the name of the environment variable that holds the {client.kind} API key",
        )
    return None


def _error(problems: list[tuple[str, str]]) -> ConfigurationError:
    unset = [what for what, _ in problems if what.endswith(" is not set")]
    if len(problems) == 1:
        what, expected = problems[0]
        text = f"{what}; {expected}"
    else:
        text = "; ".join(f"{what} ({expected})" for what, expected in problems)
        text = f"{len(problems)} providers cannot be called: {text}"
    if unset:
        text += f" ({STUBS_HINT})"
    return ConfigurationError(text)


def adapters_from_policy(
    policy: Policy,
    providers: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    domains: Mapping[str, str] | None = None,
    scheme: str | None = None,
    max_answer_bytes: int = MAX_ANSWER_BYTES,
) -> dict[str, GeocodeAdapter]:
    """An adapter per provider from its ``kind``, ``api_key_env``, ``domain``, ``scheme``,
    ``timeout_ms`` and ``stores_results`` (``domains`` / ``scheme`` override, for stubs).
    ``env`` holds the keys (default: the process environment); ``max_answer_bytes``: the
    largest answer each adapter reads."""
    env = os.environ if env is None else env
    problems = [p for name in providers if (p := _key_problem(policy, name, env)) is not None]
    if problems:
        raise _error(problems)
    out: dict[str, GeocodeAdapter] = {}
    for name in providers:
        client = policy.providers[name].client
        assert client.kind is not None
        out[name] = make_adapter(
            client.kind,
            provider=name,
            api_key=env.get(client.api_key_env) if client.api_key_env is not None else None,
            domain=(domains or {}).get(name, client.domain),
            scheme=scheme or client.scheme,
            timeout=client.timeout_ms / 1000,
            stores_results=client.stores_results,
            max_answer_bytes=max_answer_bytes,
        )
    return out
