"""``tollway demo``: three parts, each a module that runs it and one that renders it as text.

- `tollway.demo.inbound` (+ ``inbound_report``): a simulated day of API traffic on two plans
  through the engine, on the memory store and a fake clock, with the policy of
  ``examples/tollway.toml`` (package data here: ``tollway.toml``).
- `tollway.demo.geocoding` (+ ``geocoding_report``): a batch of addresses failing over across
  three local stub providers as their quotas and budgets run out (needs the geocode extra).
- `tollway.demo.metering` (+ ``metering_report``, ``receiver``): an hour of usage written to a
  SQLite ledger and delivered to a callable hook and a signed webhook, held against the
  counters.

The demo sits above every other layer: it uses tollway as an application would.
"""

from __future__ import annotations

from tollway.demo.inbound import DEMO_POLICY, DemoResult, SubjectStats, demo_policy, simulate

__all__ = ["DEMO_POLICY", "DemoResult", "SubjectStats", "demo_policy", "simulate"]
