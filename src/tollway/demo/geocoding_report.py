"""The geocoding part of ``tollway demo``, as text: from a `GeocodingDemo`."""

from __future__ import annotations

from tollway.cli.geocode import spend_report
from tollway.cli.output import plural, table
from tollway.demo.geocoding import KINDS, GeocodingDemo

__all__ = ["render_geocoding"]


def render_geocoding(demo: GeocodingDemo) -> str:
    """The demo's geocoding part, as text: who answered which rows and why others were
    passed over, then the spend report."""
    report = demo.report
    lines = [
        f'Geocoding: {plural(report.rows, "address", "addresses")} through route "geocoding" '
        f"({' -> '.join(KINDS)}), stub providers on 127.0.0.1 speaking their real formats",
        "",
    ]
    runs: list[tuple[int, int, str, str]] = []
    for number, outcome in enumerate(report.outcomes, start=1):
        who = outcome.provider or "-"
        if outcome.from_cache:
            who += " (cached)"
        if outcome.status == "failed":
            who = "nobody"
        why = "; ".join(
            f"{skip.provider}: {skip.reason}" + (f" ({skip.detail})" if skip.detail else "")
            for skip in outcome.skipped
        )
        if runs and runs[-1][2:] == (who, why):
            first, _, _, _ = runs[-1]
            runs[-1] = (first, number, who, why)
        else:
            runs.append((number, number, who, why))
    rows = [[f"{a}" if a == b else f"{a}-{b}", who, why or "-"] for a, b, who, why in runs]
    lines += table(["rows", "answered by", "passed over"], rows, indent="  ")
    lines += ["", *spend_report(report, None)]
    if demo.alerts:
        lines.append("")
        lines += [
            f"  alert: {a.provider} {a.limit} reached {a.threshold:.0%} ({a.used} USD used)"
            for a in demo.alerts
        ]
    billed = ", ".join(f"{kind} {count}" for kind, count in demo.served.items())
    lines += ["", f"Calls the stub providers answered (what they would bill): {billed}"]
    return "\n".join(lines)
