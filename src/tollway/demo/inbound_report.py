"""The inbound part of ``tollway demo``, as text: from a `tollway.demo.inbound.DemoResult`."""

from __future__ import annotations

import math

from tollway.cli.output import bar, plural, table
from tollway.demo.inbound import DemoResult, SubjectStats
from tollway.engine.decision import LimitState
from tollway.policy.model import Limit, Policy

BAR_WIDTH = 50


__all__ = ["render_inbound"]


def render_inbound(result: DemoResult, policy_name: str) -> str:
    """The whole report, as text."""
    lines = _heading(result, policy_name)
    lines += ["", *_decisions(result)]
    lines += ["", *_remaining(result)]
    lines += ["", *_hours(result)]
    lines += ["", *_moments(result)]
    return "\n".join(lines)


def _clock(at_us: int) -> str:
    seconds = at_us // 1_000_000
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _describe(limit: Limit) -> str:
    if limit.rate is not None:
        text = f"{limit.name} {limit.rate.text}"
        if limit.burst is not None:
            text += f" (burst {limit.burst})"
    elif limit.quota is not None:
        text = f"{limit.name} {limit.quota.text}"
    else:
        assert limit.budget is not None
        text = f"{limit.name} {limit.budget.text}"
    if limit.grace is not None:
        text += f" +{limit.grace.text} grace"
    if limit.operations is not None:
        text += f" on {', '.join(limit.operations)}"
    return text


def _heading(result: DemoResult, policy_name: str) -> list[str]:
    day = result.start.strftime("%a %Y-%m-%d")
    lines = [
        f"tollway demo: a simulated day ({day} UTC) on the memory store, with a fake clock",
        f"seed {result.seed}, {plural(len(result.subjects), 'subject')}, "
        f"{plural(result.total_attempts, 'call')}; policy: {policy_name}",
        "",
    ]
    rows = [
        [plan.name, " | ".join(_describe(limit) for limit in plan.limits)]
        for plan in result.policy.plans.values()
    ]
    return lines + table(["plan", "limits"], rows)


def _limit_names(policy: Policy) -> list[str]:
    """Every limit name of every plan, in policy order, once."""
    names: dict[str, None] = {}
    for plan in policy.plans.values():
        for limit in plan.limits:
            names.setdefault(limit.name)
    return list(names)


def _plan_text(stats: SubjectStats) -> str:
    return " -> ".join(stats.plans)


def _decisions(result: DemoResult) -> list[str]:
    policy = result.policy
    names = _limit_names(policy)
    rows = []
    for stats in result.subjects:
        held = {limit.name for plan in stats.plans for limit in policy.plans[plan].limits}
        rows.append(
            [
                stats.name,
                _plan_text(stats),
                str(stats.attempts),
                str(stats.allowed),
                str(stats.denied),
                *(str(stats.denied_by[name]) if name in held else "-" for name in names),
            ]
        )
    headers = ["subject", "plan", "attempts", "allowed", "denied", *names]
    lines = [
        "decisions (denied by: an attempt counts under every limit it broke; "
        "- : not on the subject's plan)"
    ]
    lines += table(headers, rows, right=range(2, len(headers)))
    for stats in result.subjects:
        if stats.reservations:
            lines.append(
                f"  {stats.name}: {plural(stats.reservations, 'reservation')} committed, "
                f"{stats.committed} of {stats.estimated} estimated units used, the rest given back"
            )
    return lines


def _key(state: LimitState) -> str:
    return state.name if state.operation is None else f"{state.name}[{state.operation}]"


def _left(state: LimitState) -> str:
    text = f"{state.remaining}/{state.limit}"
    return f"{text} {state.currency}" if state.currency else text


def _remaining(result: DemoResult) -> list[str]:
    columns: dict[str, None] = dict.fromkeys(_limit_names(result.policy))
    ends: list[dict[str, LimitState]] = []
    for stats in result.subjects:
        assert stats.end is not None
        states = {_key(state): state for state in stats.end.limits}
        ends.append(states)
        for key in states:
            columns.setdefault(key)
    keys = [key for key in columns if any(key in states for states in ends)]
    rows = [
        [
            stats.name,
            stats.end.plan or "-" if stats.end else "-",
            *(_left(states[key]) if key in states else "-" for key in keys),
        ]
        for stats, states in zip(result.subjects, ends, strict=True)
    ]
    lines = ["remaining at 23:59:59 (remaining/limit; - : not on the subject's plan)"]
    return lines + table(["subject", "plan", *keys], rows, right=range(2, len(keys) + 2))


def _hours(result: DemoResult) -> list[str]:
    busiest = max((hour.attempts for hour in result.hours), default=0)
    scale = max(1, math.ceil(busiest / BAR_WIDTH))
    rows = [
        [
            f"{h:02d}:00",
            str(hour.attempts),
            str(hour.allowed),
            str(hour.denied),
            bar([(hour.allowed, "#"), (hour.denied, "x")], scale),
        ]
        for h, hour in enumerate(result.hours)
    ]
    lines = [
        f"hour by hour, all subjects (# allowed, x denied; one mark = {plural(scale, 'call')})"
    ]
    return lines + table(["hour", "calls", "allowed", "denied", ""], rows, right=(1, 2, 3))


def _moments(result: DemoResult) -> list[str]:
    width = max((len(stats.name) for stats in result.subjects), default=0)
    lines = ["moments (the first of each kind, per subject)"]
    for moment in sorted(result.moments, key=lambda m: m.at):
        lines.append(f"  {_clock(moment.at)}  {moment.subject.ljust(width)}  {moment.text}")
    return lines
