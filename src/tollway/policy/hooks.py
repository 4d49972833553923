"""The ``[[hooks]]``: where usage events and limit notices are delivered (a signed webhook, a
Python callable, a Redis Stream), each checked whole, names unique."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import cast

from tollway.events import EVENT_TYPES, USAGE_RECORDED
from tollway.policy import fields, hook_fields
from tollway.policy.fields import quoted, show, text
from tollway.policy.model import HookAggregate, HookConfig, HookKind, StoreConfig
from tollway.policy.walker import NAME, Table, Walker, join

__all__ = ["HOOK_KEYS", "parse_hooks"]

HOOK_TARGETS: tuple[HookKind, ...] = ("url", "callable", "stream")
HOOK_KEYS = (
    "name",
    *HOOK_TARGETS,
    "stream_url",
    "secret_env",
    "events",
    "aggregate",
    "timeout_ms",
    "schedule",
    "batch",
    "allow_http",
    "allow_private",
)
AGGREGATE = fields.one_of("none", "minute", "hour")
MAX_HOOK_BATCH = 1000


def parse_hooks(w: Walker, doc: Table, store: StoreConfig) -> tuple[HookConfig, ...]:
    if "hooks" not in doc:
        return ()
    hooks: list[HookConfig] = []
    used: dict[str, str] = {}
    for i, raw in enumerate(w.items(doc["hooks"], "hooks")):
        path = f"hooks[{i}]"
        hook = _hook(w, raw, path, store)
        # Checked on the raw name, so a repeat is reported even when the hook has other faults.
        name = raw.get("name") if isinstance(raw, Mapping) else None
        if isinstance(name, str) and name in used:
            w.error(
                join(path, "name"),
                f"{show(name)} is already the name of {used[name]}; "
                "expected a name unique among the hooks",
            )
            continue
        if isinstance(name, str):
            used[name] = path
        if hook is not None:
            hooks.append(hook)
    return tuple(hooks)


def _hook(w: Walker, raw: object, path: str, store: StoreConfig) -> HookConfig | None:
    t = w.table(raw, path, HOOK_KEYS)
    if not isinstance(raw, Mapping):
        return None
    before = len(w.issues)
    name = None
    if "name" in t:
        name = w.get(t, path, "name", NAME, None)
    else:
        w.error(path, 'missing key "name"; expected a hook name such as "billing"')
    targets = [key for key in HOOK_TARGETS if key in t]
    if len(targets) != 1:
        given = " and ".join(targets) if targets else "none"
        w.error(path, f"expected exactly one of url, callable, stream; got {given}")
    kind: HookKind | None = targets[0] if len(targets) == 1 else None
    url = w.get(t, path, "url", text(hook_fields.parse_hook_url, "https://x.example/hook"), None)
    target = w.get(
        t, path, "callable", text(hook_fields.parse_callable, "billing.hooks:receive"), None
    )
    stream = w.get(t, path, "stream", fields.nonempty, None)
    stream_url = w.get(
        t,
        path,
        "stream_url",
        text(hook_fields.parse_redis_url, "redis://127.0.0.1:6379/0"),
        None,
    )
    if "stream_url" in t and kind != "stream":
        w.error(join(path, "stream_url"), "only applies to a stream hook (stream = ...)")
    if kind == "stream" and "stream_url" not in t:
        if hook_fields.is_redis_url(store.url):
            stream_url = store.url
        else:
            w.error(
                path,
                f'missing key "stream_url"; the [store] url {show(store.url)} is not a Redis '
                'one, so expected stream_url = "redis://HOST:PORT/DB"',
            )
    secret_env = w.get(
        t, path, "secret_env", text(hook_fields.parse_secret_env, "HOOK_SECRET"), None
    )
    if kind == "url" and "secret_env" not in t:
        w.error(
            path,
            'missing key "secret_env"; a webhook is signed: expected the name of an '
            'environment variable holding its whsec_ secret, e.g. secret_env = "HOOK_SECRET"',
        )
    elif kind in ("callable", "stream") and "secret_env" in t:
        w.error(join(path, "secret_env"), f"only applies to a url hook; this is a {kind} hook")
    allow_http = w.get(t, path, "allow_http", fields.boolean, False)
    allow_private = w.get(t, path, "allow_private", fields.boolean, False)
    for key in ("allow_http", "allow_private"):
        if key in t and kind != "url":
            w.error(join(path, key), f"only applies to a url hook; this is a {kind} hook")
    if url is not None:
        refused = hook_fields.hook_url_refusal(
            url, allow_http=allow_http, allow_private=allow_private
        )
        if refused is not None:
            w.error(join(path, "url"), refused)
    events = _hook_events(w, t, path)
    aggregate = w.get(t, path, "aggregate", AGGREGATE, "none")
    timeout_ms = w.get(t, path, "timeout_ms", fields.integer(1, 600_000), 5_000)
    schedule = _hook_schedule(w, t, path)
    batch = w.get(t, path, "batch", fields.integer(1, MAX_HOOK_BATCH), 1)
    if name is None or kind is None or len(w.issues) > before:
        return None
    return HookConfig(
        name=name,
        kind=kind,
        path=path,
        url=url,
        callable=target,
        stream=stream,
        stream_url=stream_url,
        secret_env=secret_env,
        events=events,
        aggregate=cast(HookAggregate, aggregate),
        timeout_ms=timeout_ms,
        schedule=schedule,
        batch=batch,
        allow_http=allow_http,
        allow_private=allow_private,
    )


def _hook_events(w: Walker, t: Table, path: str) -> tuple[str, ...]:
    if "events" not in t:
        return (USAGE_RECORDED,)
    list_path = join(path, "events")
    items = w.items(t["events"], list_path)
    if isinstance(t["events"], (list, tuple)) and not items:
        w.error(
            list_path,
            f"expected a non-empty list of event types, such as {show(USAGE_RECORDED)}",
        )
    found: list[str] = []
    for i, item in enumerate(items):
        where = f"{list_path}[{i}]"
        if item not in EVENT_TYPES:
            close = difflib.get_close_matches(str(item), EVENT_TYPES, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            w.error(
                where,
                f"{show(item)} is not an event type; expected one of {quoted(EVENT_TYPES)}" + hint,
            )
        elif item in found:
            w.error(where, f"{show(item)} is listed twice; expected each type once")
        else:
            found.append(item)
    return tuple(found)


def _hook_schedule(w: Walker, t: Table, path: str) -> tuple[float, ...] | None:
    if "schedule" not in t:
        return None
    list_path = join(path, "schedule")
    items = w.items(t["schedule"], list_path)
    if isinstance(t["schedule"], (list, tuple)) and not items:
        w.error(list_path, "expected a non-empty list of delays in seconds, such as [0, 5, 300]")
    delays = [
        w.check(item, f"{list_path}[{i}]", hook_fields.delay_seconds, None)
        for i, item in enumerate(items)
    ]
    return tuple(d for d in delays if d is not None) or None
