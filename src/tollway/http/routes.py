"""Map an HTTP request (method and path) to the policy operation it consumes.

Every operation in the policy may list the endpoints it covers::

    [operations]
    search = { cost = 5, endpoints = ["GET /v1/search", "POST /v1/search/*"] }

`EndpointMap.from_policy` compiles all of them once; `EndpointMap.match` then runs on every
request and never raises.

Pattern language (the path part of ``"METHOD /path"``):

- ``/v1/geocode``: that exact path. A request path with one trailing slash (``/v1/geocode/``)
  matches too; patterns are stored without their trailing slash, so ``"GET /v1/geocode/"`` and
  ``"GET /v1/geocode"`` are the same endpoint. Nothing else is normalized: no percent-decoding
  (the raw ASGI ``path`` / WSGI ``PATH_INFO`` is matched as it is), no collapsing of ``//``,
  no ``.``/``..`` resolution, no query string stripping.
- ``/v1/users/{id}/jobs``: a ``{name}`` segment matches exactly one non-empty path segment.
  A parameter must be a whole segment (``/v1/file.{ext}`` is refused).
- ``/v1/search/*``: a trailing ``/*`` matches any deeper path (``/v1/search/x``,
  ``/v1/search/x/y``) but **not** ``/v1/search`` itself (nor ``/v1/search/``); list
  ``"GET /v1/search"`` as well to cover it. ``/*`` matches every path but ``/``. A ``*``
  anywhere else is refused.
- The method is a capitalized token or ``*`` (any method). A ``HEAD`` request matches the
  ``GET`` endpoints unless ``HEAD`` is listed for the same path. Request methods are
  case-insensitive.

Precedence, when several patterns match one request:

1. ``exempt`` paths first: an exempt request is never limited, whatever else it matches.
2. Exact paths, then ``{param}`` patterns, then ``/*`` wildcards.
3. Within params and wildcards: more segments before fewer (so ``/v1/search/fast/*`` wins over
   ``/v1/search/*``), then more literal segments, then the pattern whose leftmost difference
   is a literal (``/v1/users/me`` style before ``/v1/users/{id}``).
4. For the same path pattern, the request's own method before ``GET`` (for ``HEAD``) before
   ``*``. The path decides first: ``"* /v1/x"`` (exact) beats ``"GET /v1/{id}"`` (param).

Two operations claiming the same method and pattern (parameter names do not count:
``/v1/{a}`` and ``/v1/{b}`` are the same pattern) is a `tollway.errors.PolicyError` naming both
key paths. A pattern the matcher cannot compile is a `PolicyError` too.

Exact paths are found in a dict (O(1)); the other patterns of one method are compiled into one
regular expression of alternatives in precedence order, so a miss costs one C-level scan.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from tollway.errors import ConfigurationError, PolicyError, PolicyIssue
from tollway.policy.fields import parse_endpoint, show
from tollway.policy.model import Policy

__all__ = ["EXEMPT", "MAX_PATH", "EndpointMap", "Exempt", "Match", "MatchResult"]

MAX_PATH: Final = 8192
"""Request paths longer than this (in characters) never match."""
MAX_METHOD: Final = 32
"""Request methods longer than this never match."""

# RFC 9110 token characters: what a request method may be made of.
_METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1," + str(MAX_METHOD) + "}", re.ASCII)
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}", re.ASCII)
_ANY = "*"


class Exempt(enum.Enum):
    """The type of `EXEMPT`."""

    EXEMPT = "exempt"

    def __repr__(self) -> str:
        return "EXEMPT"


EXEMPT: Final = Exempt.EXEMPT
"""What `EndpointMap.match` returns for an exempt request: the middleware skips limiting."""


@dataclass(frozen=True, slots=True)
class Match:
    """The operation a request consumes, and the endpoint pattern that said so."""

    operation: str
    pattern: str
    """The endpoint as written in the policy (or the override), e.g. ``"POST /v1/search/*"``."""


MatchResult = Match | Literal[Exempt.EXEMPT] | None
"""What `EndpointMap.match` returns."""

_Result = Match | Literal[Exempt.EXEMPT]

_EXACT, _PARAMS, _WILDCARD = 0, 1, 2


@dataclass(frozen=True, slots=True)
class _Pattern:
    key: str
    """The normalized path: no trailing slash, every parameter written ``{}``."""
    kind: int
    regex: str
    order: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: _Pattern
    result: _Result
    where: str
    """Who declared it, for error messages: a policy key path, ``overrides`` or ``exempt``."""


def _strip_slash(path: str) -> str:
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


def _compile(path: str) -> _Pattern:
    """Compile the path part of an endpoint; `ValueError` says what is wrong with it."""
    if not path.startswith("/"):
        raise ValueError(f'{show(path)} is not a path; expected one starting with "/"')
    if any(char.isspace() for char in path):
        raise ValueError(f"{show(path)} contains whitespace; expected a path")
    if len(path) > MAX_PATH:
        raise ValueError(f"the path is longer than {MAX_PATH} characters")
    wildcard = path == "/*" or path.endswith("/*")
    body = path[:-2] if wildcard else _strip_slash(path)
    segments = body.split("/")[1:] if body not in ("", "/") else []
    keys: list[str] = []
    regex: list[str] = []
    shape: list[int] = []
    for segment in segments:
        if _PARAM.fullmatch(segment):
            keys.append("{}")
            regex.append("/[^/]+")
            shape.append(1)
            continue
        if "*" in segment:
            raise ValueError(
                f'{show(path)}: "*" may only be the last segment ("/v1/search/*"), '
                f"not part of {show(segment)}"
            )
        if "{" in segment or "}" in segment:
            raise ValueError(
                f"{show(path)}: {show(segment)} is not a parameter; expected a whole segment "
                'such as "{id}" (letters, digits and "_", not starting with a digit)'
            )
        keys.append(segment)
        regex.append("/" + re.escape(segment))
        shape.append(0)
    key = "/" + "/".join(keys)
    if wildcard:
        key = ("" if key == "/" else key) + "/*"
        regex.append("/.+")
        kind = _WILDCARD
    else:
        kind = _PARAMS if 1 in shape else _EXACT
    order = (kind, -len(shape), sum(shape), tuple(shape), key)
    return _Pattern(key=key, kind=kind, regex="".join(regex) or "/", order=order)


class _Table:
    """The routes of one request method: exact paths in a dict, the rest in one regex."""

    __slots__ = ("_exact", "_regex", "_results")

    def __init__(self, routes: Iterable[_Route]) -> None:
        self._exact: dict[str, _Result] = {}
        rest: list[_Route] = []
        for route in routes:
            if route.pattern.kind == _EXACT:
                self._exact[route.pattern.key] = route.result
            else:
                rest.append(route)
        rest.sort(key=lambda route: route.pattern.order)
        self._results: tuple[_Result, ...] = tuple(route.result for route in rest)
        # One capturing group per alternative and none inside: lastindex names the winner.
        source = "|".join(f"({route.pattern.regex})" for route in rest)
        self._regex = re.compile(source, re.DOTALL) if rest else None

    def lookup(self, path: str) -> _Result | None:
        result = self._exact.get(path)
        if result is not None or self._regex is None:
            return result
        found = self._regex.fullmatch(path)
        if found is None or found.lastindex is None:
            return None
        return self._results[found.lastindex - 1]


class _Index:
    """Routes by method, with ``*`` routes and ``GET`` routes (for ``HEAD``) merged in."""

    __slots__ = ("_any", "_tables")

    def __init__(self, routes: Iterable[_Route]) -> None:
        by_method: dict[str, dict[str, _Route]] = {}
        for route in routes:
            by_method.setdefault(route.method, {})[route.pattern.key] = route
        wildcard = by_method.pop(_ANY, {})
        if "GET" in by_method:
            by_method.setdefault("HEAD", {})
        self._tables: dict[str, _Table] = {}
        for method, own in by_method.items():
            merged = dict(wildcard)
            if method == "HEAD":
                merged.update(by_method.get("GET", {}))
            merged.update(own)  # the method's own routes win over GET's and *'s
            self._tables[method] = _Table(merged.values())
        self._any = _Table(wildcard.values())

    def lookup(self, method: str, path: str) -> _Result | None:
        return self._tables.get(method, self._any).lookup(path)


def _split_endpoint(text: str) -> tuple[str, str]:
    parse_endpoint(text)  # the policy's own check: "METHOD /path", METHOD capitals or "*"
    method, _, path = text.partition(" ")
    return method, path


# Answers remembered per map: paths up to _SEEN_PATH characters, _SEEN_MAX of them (then the
# memory starts again), so a flood of distinct paths costs at most about a megabyte.
_SEEN_MAX = 4096
_SEEN_PATH = 256


class EndpointMap:
    """Which operation each endpoint consumes; build with `from_policy`, ask with `match`."""

    __slots__ = ("_exempt", "_index", "_seen")

    def __init__(self, routes: Iterable[_Route], exempt: Iterable[_Route] = ()) -> None:
        self._index = _Index(routes)
        self._exempt = _Index(exempt)
        # Answers by (method, path) as given: most traffic hits a few paths again and again.
        self._seen: dict[tuple[object, object], MatchResult] = {}

    @classmethod
    def from_policy(
        cls,
        policy: Policy,
        *,
        overrides: Mapping[str, str | None] | None = None,
        exempt: Iterable[str] = (),
    ) -> EndpointMap:
        """Compile the ``endpoints`` of every operation of ``policy``.

        ``overrides`` maps an endpoint ``"METHOD /path"`` (same syntax as the policy) to the
        operation it consumes instead, or to ``None`` to exempt it; an endpoint the policy
        does not list is added. ``exempt`` lists paths that are never limited, with or without a
        method (``"/health"``, ``"GET /metrics"``, ``"/internal/*"``); they take precedence
        over every endpoint.

        Raises `PolicyError` when two operations claim the same endpoint or a pattern cannot be
        compiled, and `ConfigurationError` for a bad override or exempt path, or an override
        naming an operation the policy does not declare.
        """
        issues: list[PolicyIssue] = []
        routes: dict[tuple[str, str], _Route] = {}
        for name, operation in policy.operations.items():
            for i, text in enumerate(operation.endpoints):
                where = f"operations.{name}.endpoints[{i}]"
                try:
                    method, path = _split_endpoint(text)
                    pattern = _compile(path)
                except ValueError as exc:
                    issues.append(PolicyIssue(where, str(exc), policy.source))
                    continue
                slot = (method, pattern.key)
                claimed = routes.get(slot)
                if claimed is not None:
                    if isinstance(claimed.result, Match) and claimed.result.operation == name:
                        continue  # the same operation listing one endpoint twice is harmless
                    issues.append(
                        PolicyIssue(
                            where,
                            f"{show(text)} is already claimed by {claimed.where} "
                            f"({show(_text(claimed))}, operation {show(_name(claimed))}); "
                            f"expected each endpoint to map to one operation, not both "
                            f"{show(_name(claimed))} and {show(name)}",
                            policy.source,
                        )
                    )
                    continue
                routes[slot] = _Route(method, pattern, Match(name, text), where)
        if issues:
            raise PolicyError(issues)

        for text, target in (overrides or {}).items():
            where = f"overrides[{show(text)}]"
            method, pattern = _config_endpoint(text, where)
            if target is None:
                result: _Result = EXEMPT
            elif isinstance(target, str) and target in policy.operations:
                result = Match(target, text)
            else:
                known = ", ".join(show(name) for name in policy.operations) or "none"
                raise ConfigurationError(
                    f"{where}: {show(target)} is not an operation of the policy; expected "
                    f"one of {known}, or None to exempt the endpoint"
                )
            routes[(method, pattern.key)] = _Route(method, pattern, result, where)

        if isinstance(exempt, str):
            exempt = (exempt,)
        exempts: list[_Route] = []
        for i, entry in enumerate(exempt):
            where = f"exempt[{i}]"
            bare = isinstance(entry, str) and entry.startswith("/")
            method, pattern = _config_endpoint(f"* {entry}" if bare else entry, where)
            exempts.append(_Route(method, pattern, EXEMPT, where))
        return cls(routes.values(), exempts)

    def match(self, method: str, path: str) -> MatchResult:
        """The operation the request consumes, `EXEMPT`, or ``None`` when nothing matches.

        Never raises: a method or path that is not a string, a path longer than `MAX_PATH`
        or not starting with ``/`` (``*``, absolute-form URLs), and a method that is not an
        RFC 9110 token of at most `MAX_METHOD` characters all give ``None``.
        """
        key = (method, path)
        try:
            return self._seen[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable method or path
            return None
        result = self._match(method, path)
        if isinstance(path, str) and len(path) <= _SEEN_PATH:
            seen = self._seen
            if len(seen) >= _SEEN_MAX:
                seen.clear()
            seen[key] = result
        return result

    def _match(self, method: str, path: str) -> MatchResult:
        if not isinstance(method, str) or not isinstance(path, str):
            return None
        if not path.startswith("/") or len(path) > MAX_PATH or not _METHOD.fullmatch(method):
            return None
        method = method.upper()
        path = _strip_slash(path)
        if self._exempt.lookup(method, path) is not None:
            return EXEMPT
        return self._index.lookup(method, path)


def _config_endpoint(text: object, where: str) -> tuple[str, _Pattern]:
    if not isinstance(text, str):
        raise ConfigurationError(f'{where}: expected a string such as "GET /v1/geocode"')
    try:
        method, path = _split_endpoint(text)
        return method, _compile(path)
    except ValueError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _text(route: _Route) -> str:
    return route.result.pattern if isinstance(route.result, Match) else ""


def _name(route: _Route) -> str:
    return route.result.operation if isinstance(route.result, Match) else ""
