"""Aggregate worker records (medians over rounds) and render ``bench/RESULTS.md``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean, median
from typing import Any

from bench.common import FLOOR, TOLLWAY

CONFIGS = ("A", "B")

# (title, group, metric, {config: threshold})
TARGETS = [
    ("3 limits, sync Redis (ratio to EVALSHA)", "redis3", "ratio", {"A": 0.90, "B": 0.80}),
    ("1 limit, sync Redis (ratio to EVALSHA)", "redis1", "ratio", {"A": 0.95, "B": 0.90}),
    (
        "async, 50 tasks (ratio to redis.asyncio EVALSHA)",
        "async50",
        "ratio",
        {"A": 0.90, "B": 0.90},
    ),
    ("memory, 1 limit (calls/s)", "memory1", "calls_per_s", {"A": 600_000, "B": 600_000}),
    ("memory, 3 limits (calls/s)", "memory3", "calls_per_s", {"A": 300_000, "B": 300_000}),
]


@dataclass
class Cell:
    """One subject in one config: per-round values and their medians."""

    cps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    ratio: list[float] = field(default_factory=list)
    denied: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def med(self, attr: str) -> float | None:
        values = getattr(self, attr)
        return median(values) if values else None


@dataclass
class Row:
    name: str
    kind: str
    cells: dict[str, Cell] = field(default_factory=lambda: {c: Cell() for c in CONFIGS})
    cmds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    trips: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def redis_text(self) -> str:
        def fmt(d: dict[str, list[float]]) -> str:
            meds = sorted(((median(v), c) for c, v in d.items()), reverse=True)
            return " + ".join(f"{c.upper()} {v:.2f}" for v, c in meds if v >= 0.005) or "none"

        total = sum(median(v) for v in self.trips.values())
        return f"**{total:.2f}** ({fmt(self.trips)}); commands run: {fmt(self.cmds)}"


def aggregate(records: list[dict[str, Any]]) -> tuple[dict[str, list[Row]], dict[str, Any]]:
    """Group -> rows (floor first); also per-(group, config) floor drift (after / before)."""
    floors: dict[tuple[int, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in records:
        if r["kind"] == FLOOR and r["status"] == "ok":
            floors[(r["round"], r["config"], r["group"])][r["phase"]] = r
    refs = {k: mean(v["calls_per_s"] for v in f.values()) for k, f in floors.items()}
    drift: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (_, config, group), f in floors.items():
        if "before" in f and "after" in f:
            drift[(group, config)].append(f["after"]["calls_per_s"] / f["before"]["calls_per_s"])

    groups: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in records:
        row = groups[r["group"]].setdefault(r["name"], Row(r["name"], r["kind"]))
        cell = row.cells.setdefault(r["config"], Cell())
        if r["status"] != "ok":
            cell.problems.append(f"{r['status']}: {r.get('error', '')}")
            continue
        cell.denied += int(r["denied"])
        cell.warnings += r.get("warnings", [])
        for cmd, per_call in r.get("cmds_per_call", {}).items():
            row.cmds[cmd].append(per_call)
        for cmd, per_call in r.get("round_trips", {}).items():
            row.trips[cmd].append(per_call)
        cell.p50.append(r["p50_us"])
        cell.p99.append(r["p99_us"])
        ref = refs.get((r["round"], r["config"], r["group"]))
        if r["kind"] == FLOOR:
            if r["phase"] == "before" and ref is not None:  # one value per round: the reference
                cell.cps.append(ref)
                cell.ratio.append(1.0)
            continue
        cell.cps.append(r["calls_per_s"])
        if ref:
            cell.ratio.append(r["calls_per_s"] / ref)
    rows = {g: sorted(d.values(), key=lambda row: row.kind != FLOOR) for g, d in groups.items()}
    return rows, {f"{g}/{c}": median(v) for (g, c), v in drift.items()}


def fmt_cps(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_us(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def cell_text(cell: Cell | None, is_floor: bool) -> list[str]:
    if cell is None or (not cell.cps and not cell.problems):
        return ["—", "—", "—"]
    if not cell.cps:
        status = cell.problems[0].split(":", 1)[0]
        return [status, "", ""]
    ratio = "1.00 (ref)" if is_floor else f"**{cell.med('ratio'):.2f}**" if cell.ratio else "—"
    if cell.warnings:
        ratio += " ⚠ see Notes"
    if cell.problems:
        ratio += f" ⚠ {len(cell.problems)} failed round(s)"
    lat = f"{fmt_us(cell.med('p50'))} / {fmt_us(cell.med('p99'))}"
    return [fmt_cps(cell.med("cps")), lat, ratio]


def group_table(rows: list[Row]) -> list[str]:
    out = [
        "| peer | A calls/s | A p50/p99 µs | A ratio | B calls/s | B p50/p99 µs | B ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        name = f"**{row.name}**" if row.kind == TOLLWAY else row.name
        cells = [t for c in CONFIGS for t in cell_text(row.cells.get(c), row.kind == FLOOR)]
        out.append("| " + " | ".join([name, *cells]) + " |")
    return out


def target_rows(rows: dict[str, list[Row]]) -> list[str]:
    out = [
        "| target | config | needed | tollway (median) | tollway min to max over rounds "
        "| best peer (median) | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for title, group, metric, need in TARGETS:
        group_rows = rows.get(group, [])
        tw = next((r for r in group_rows if r.kind == TOLLWAY), None)
        for config, threshold in need.items():
            attr = "ratio" if metric == "ratio" else "cps"
            show = (lambda v: f"{v:.2f}") if attr == "ratio" else fmt_cps
            peers = [
                v
                for r in group_rows
                if r.kind not in (FLOOR, TOLLWAY) and (v := r.cells[config].med(attr)) is not None
            ]
            best = show(max(peers)) if peers else "—"
            cell = tw.cells.get(config) if tw else None
            value = cell.med(attr) if cell else None
            if cell is None or value is None:
                why = cell.problems[0].split(":", 1)[0] if cell and cell.problems else "not run"
                out.append(
                    f"| {title} | {config} | {show(threshold)} | — | — | {best} | "
                    f"n/a ({why}; see Notes) |"
                )
                continue
            values = getattr(cell, attr)
            spread = f"{show(min(values))} to {show(max(values))}"
            gap = value - threshold
            if attr == "ratio":
                verdict = f"met (+{gap:.2f})" if gap >= 0 else f"**missed** by {-gap:.2f}"
            else:
                pct = 100 * gap / threshold
                verdict = (
                    f"met (+{gap:,.0f}/s, +{pct:.0f}%)"
                    if gap >= 0
                    else f"**missed** by {-gap:,.0f}/s ({pct:.0f}%)"
                )
            if cell.warnings:
                verdict += " ⚠ invalid, see Notes"
            out.append(
                f"| {title} | {config} | {show(threshold)} | {show(value)} | {spread} "
                f"| {best} | {verdict} |"
            )
    return out


REDIS_NOTE = (
    "Round trips per call (MONITOR over 20 calls after timing; commands inside Lua not "
    "counted) and the commands Redis ran per call, Lua-internal included (INFO commandstats):"
)

GROUP_NOTES = {
    "redis1": 'Ratio: calls/s ÷ raw redis-py `EVALSHA "return 1"` (0 keys, one connection), '
    "same round and config.",
    "redis3": "10⁷/s, 10⁸/h, 10⁹/day on one client. tollway: one acquire; limits: `hit()` each "
    "in turn (3 round trips); pyrate: one bucket with three Rates (1 round trip); throttled: "
    "one `Throttled` per quota (3 round trips). Ratio to the same EVALSHA floor.",
    "async50": "50 tasks share the calls; each client has a pool of at most 50 connections. "
    "Latency is the gap between a task's consecutive calls. Ratio to redis.asyncio EVALSHA "
    "at 50 tasks.",
    "memory1": "Ratio: calls/s ÷ a six-line pure-Python dict counter (dict + monotonic). "
    "Absolute calls/s is what the targets use.",
    "memory3": "The floor is three such dict counters checked in turn.",
}


def render(
    *,
    titles: dict[str, str],
    rows: dict[str, list[Row]],
    drift: dict[str, float],
    machine: list[tuple[str, str]],
    method: list[str],
    notes: list[str],
    header: list[str],
) -> str:
    out = [*header, "", "## Machine and versions", "", "| item | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine]
    out += ["", "## Method", "", *(f"- {m}" for m in method), "", "## Targets (tollway)", ""]
    out += target_rows(rows)
    for group, title in titles.items():
        if group not in rows:
            continue
        out += ["", f"## {title}", "", GROUP_NOTES.get(group, ""), ""]
        out += group_table(rows[group])
        cmds = [f"- {row.name}: {row.redis_text()}" for row in rows[group] if row.cmds]
        if cmds:
            out += ["", REDIS_NOTE, "", *cmds]
        d = [f"{c}: {drift[f'{group}/{c}']:.2f}" for c in CONFIGS if f"{group}/{c}" in drift]
        if d:
            out += ["", f"Floor drift within a round (after ÷ before, median): {', '.join(d)}."]
    if notes:
        out += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    return "\n".join(out) + "\n"
