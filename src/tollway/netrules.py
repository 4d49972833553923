"""Where a webhook may go: the rules that keep a hook URL from reaching inside the network
(SSRF), shared by the policy's checks and the delivery.

- The scheme is ``https`` except to a loopback host (``127.0.0.0/8``, ``::1``, ``localhost``),
  unless the hook says ``allow_http = true``.
- The address connected to is checked after resolving, every time (a name may resolve
  anywhere, and to somewhere else tomorrow: DNS rebinding). Loopback is allowed; private,
  shared (CGNAT), link-local, unique-local, multicast, unspecified and reserved addresses are
  refused unless the hook says ``allow_private = true``. The delivery connects to the very
  address it checked, with the name kept for the ``Host`` header and TLS SNI.
- Redirects are never followed (a 3xx is a failed attempt).

This module only classifies; the callers raise their own errors (a policy issue naming the
key, a `ConfigurationError`, a refused delivery).
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["IP", "address_refusal", "is_loopback_host", "literal_ip", "scheme_refusal"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_UNIQUE_LOCAL: Final = ipaddress.ip_network("fc00::/7")
_SHARED: Final = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT


def literal_ip(host: str) -> IP | None:
    """The address ``host`` is written as (``10.0.0.1``, ``[::1]``, ``::1``), else None (a
    name). IPv6 zone ids (``fe80::1%eth0``) are dropped: the address decides."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    return _unmapped(ip)


def _unmapped(ip: IP) -> IP:
    """``::ffff:10.0.0.1`` is ``10.0.0.1``: checked as what it reaches."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address: a receiver on this machine."""
    if host.lower().rstrip(".") == "localhost":
        return True
    ip = literal_ip(host)
    return ip is not None and ip.is_loopback


def scheme_refusal(scheme: str, host: str, *, allow_http: bool) -> str | None:
    """Why a webhook to ``scheme://host`` is refused (None: it is not)."""
    if scheme.lower() == "https" or allow_http or is_loopback_host(host):
        return None
    return (
        "plain http:// sends events and signatures in the clear; expected https:// (http:// "
        "only to a loopback host: 127.0.0.1, ::1, localhost), or allow_http = true"
    )


def address_refusal(ip: IP | str, *, allow_private: bool) -> str | None:
    """Why connecting to ``ip`` is refused, as ``"10.0.0.1 is a private address"`` (None: it
    is allowed)."""
    addr = _unmapped(ipaddress.ip_address(ip.partition("%")[0] if isinstance(ip, str) else ip))
    if addr.is_loopback or allow_private:
        return None
    kind = _kind(addr)
    return None if kind is None else f"{addr} is {kind}"


def _kind(addr: IP) -> str | None:
    if addr.is_unspecified:
        return "an unspecified address"
    if addr.is_multicast:
        return "a multicast address"
    if addr.is_link_local:
        return "a link-local address"
    if isinstance(addr, ipaddress.IPv6Address) and addr in _UNIQUE_LOCAL:
        return "a unique-local address"
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if addr.is_reserved:
        return "a reserved address"
    if addr.is_private:
        return "a private address"
    if not addr.is_global:
        return "a reserved address"
    return None
