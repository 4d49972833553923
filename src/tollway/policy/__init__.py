"""The policy: parse and validate a policy file into frozen objects.

``load`` reads a ``.toml``/``.yaml`` file (or takes an already parsed mapping), ``loads`` reads
text, and ``policy_schema`` gives the JSON Schema editors can use to check a file as it is typed.
Every problem in a document is reported at once, in one `tollway.errors.PolicyError`.
"""

from tollway.policy.loader import load, loads
from tollway.policy.model import (
    Budget,
    Defaults,
    Grace,
    Limit,
    Operation,
    Plan,
    Policy,
    Provider,
    Quota,
    Rate,
    RouteSpec,
    StoreConfig,
)
from tollway.policy.schema import policy_schema

Route = RouteSpec
"""The name `RouteSpec` had before it stopped sharing one with `tollway.outbound.Route`."""

__all__ = [
    "load",
    "loads",
    "policy_schema",
    "Policy",
    "StoreConfig",
    "Defaults",
    "Operation",
    "Plan",
    "Limit",
    "Rate",
    "Quota",
    "Budget",
    "Grace",
    "Provider",
    "Route",
    "RouteSpec",
]
