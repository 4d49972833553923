"""Who is calling, when the request carries no API key: the client's IP address.

The address is the TCP peer's unless the peer is a **trusted proxy**. Nothing is trusted by
default: a client can write any ``X-Forwarded-For`` it likes, so the header only counts when the
connection comes from a proxy the operator listed, e.g.::

    ClientIP(trusted=["10.0.0.0/8", "127.0.0.1", "::1"])

When the peer is trusted, the forwarding header is walked from right to left (the right end was
written by the proxy nearest to us), skipping trusted addresses; the first untrusted address is
the client. Rules, all in favour of never trusting what a client could have written:

- Only **one** header is read, the one the proxies set: ``X-Forwarded-For`` by default (nginx,
  HAProxy, cloud load balancers), or RFC 7239 ``Forwarded`` with ``header="forwarded"``. Reading
  both would let a client smuggle a ``Forwarded`` value past a proxy that only appends to
  ``X-Forwarded-For``.
- Several lines of the header are one list, in order. Each line is parsed on its own, so a
  client's broken quoting cannot swallow the entries a proxy appended on a later line.
- A malformed entry, an obfuscated identifier (``_hidden``) or ``unknown`` stops the walk: it is
  not an address, and whatever lies left of it cannot be vouched for. The answer is then the
  last address reached, a trusted proxy (which is conservative: its clients share one subject).
- Every entry being trusted gives the leftmost one (a request from inside the network).
- The work is bounded whatever the client sent: only the last `MAX_FORWARDED` characters of
  the header (all lines together) are read and at most `MAX_HOPS` entries are walked, each
  parsed only when the walk reaches it. Reaching either bound stops the walk as a malformed
  entry does (the answer is the last address reached, a trusted proxy): what lies left of it
  was not read, so it cannot be vouched for. ``X-Forwarded-For`` is cut at the bound (the
  entry cut in two is dropped); a ``Forwarded`` line, whose quoting can only be read from its
  start, is read whole or not at all.
- Ports must be real ports, 1 to 65535 (``203.0.113.7:4711``, ``"[2001:db8::1]:4711"``; an
  IPv6 address with a port needs its brackets); ``1.2.3.4:99999`` or ``1.2.3.4:`` is malformed.
  Ports are dropped from the answer, IPv4-mapped IPv6
  (``::ffff:203.0.113.7``) becomes IPv4, an IPv6 zone (``%eth0``) is dropped, and the answer is
  the canonical text of the address (``2001:db8::1``, never ``2001:DB8:0::1``).

`ClientIP.resolve` never raises on request data, and always answers an IP address or
`UNKNOWN`. A peer that is not an IP address (a Unix socket's path, Starlette's
``"testclient"``, or whatever text a server that rewrites the peer from a forwarding header
put there, as uvicorn does with its default ``--proxy-headers``) is never trusted and gives
`UNKNOWN`: its text is never a subject, so a client cannot pick its own
(``ip:anything-i-like``); every such request counts as the one subject ``ip:unknown``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, Literal

from tollway.errors import ConfigurationError

__all__ = ["UNKNOWN", "ClientIP", "subject_for_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]]

UNKNOWN: Final = "unknown"
"""What `ClientIP.resolve` returns when the request has no usable peer address."""

MAX_PEER: Final = 255
MAX_NODE: Final = 128
"""Entries longer than this are malformed: no address with a port is that long."""
MAX_FORWARDED: Final = 8192
"""Characters of the forwarding header read, from its right end, all lines together."""
MAX_HOPS: Final = 32
"""Entries walked from the right (empty list elements included) before the walk stops."""

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# A port is 1 to 65535 without leading zeros (range checked in `_port_ok`), or obfuscated.
_PORT = r"(?::([1-9][0-9]{0,4}|_[A-Za-z0-9._-]+))?"
_V4_PORT = re.compile(r"([0-9.]+)" + _PORT, re.ASCII)
_V6_BRACKETS = re.compile(r"\[([0-9A-Fa-f:.]+(?:%[A-Za-z0-9._~-]+)?)\]" + _PORT, re.ASCII)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# One forwarded-pair: a token, "=", a token or a quoted-string. RFC 7239 allows no whitespace
# around "=", but accepting it costs nothing and refuses nothing a proxy would write.
_PAIR = re.compile(
    rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^\s;,"]*))[ \t]*', re.ASCII
)
_UNQUOTE = re.compile(r"\\(.)")


def _normalize(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(address.packed)
    return address


def _address(text: str) -> IPAddress | None:
    try:
        return _normalize(ipaddress.ip_address(text))
    except ValueError:
        return None


def _port_ok(port: str | None) -> bool:
    return port is None or port.startswith("_") or int(port) <= 65535


def parse_node(text: str) -> IPAddress | None:
    """One forwarding entry as an address, or ``None`` when it is not one (then stop).

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:80`` (an obfuscated port ``:_abc`` too; a port is 1 to 65535); refuses
    ``unknown``, obfuscated identifiers (``_hidden``), ``1.2.3.4:99999`` and anything else.
    """
    text = text.strip(" \t")
    if not text or len(text) > MAX_NODE:
        return None
    if text.startswith("["):
        bracketed = _V6_BRACKETS.fullmatch(text)
        if bracketed is None or not _port_ok(bracketed[2]):
            return None
        # Brackets hold IPv6 only ("[::ffff:192.0.2.1]" is one, and becomes IPv4).
        return _address(bracketed[1]) if ":" in bracketed[1] else None
    if text.count(":") <= 1:
        v4 = _V4_PORT.fullmatch(text)
        if v4 is None or not _port_ok(v4[2]):
            return None
        address = _address(v4[1])
        return address if isinstance(address, ipaddress.IPv4Address) else None
    return _address(text)  # a bare IPv6 address, as X-Forwarded-For writes it


Raw = str | bytes


def _text(value: Raw) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _xff_from_right(values: list[Raw]) -> Iterator[IPAddress | None]:
    """The entries of ``X-Forwarded-For`` lines from the right, parsed as they are reached;
    ``None`` for a malformed entry or a bound reached (then the walk stops)."""
    budget, hops = MAX_FORWARDED, MAX_HOPS
    for line in reversed(values):
        cut = len(line) > budget
        if cut and budget == 0:
            yield None
            return
        # Sliced before decoding: a huge line costs nothing.
        value = line[-budget:] if cut else line
        budget -= len(value)
        items = _text(value).rsplit(",", hops)
        unread = cut or len(items) > hops  # the leftmost item was cut, or not split at all
        for item in reversed(items[1:] if unread else items):
            hops -= 1
            if item.strip(" \t"):
                yield parse_node(item)
        if unread:
            yield None
            return


def _forwarded_from_right(values: list[Raw]) -> Iterator[IPAddress | None]:
    """`_xff_from_right` for RFC 7239 ``Forwarded`` lines. A quoted-string may hold commas, so
    a line can only be read from its start: a line past the bound is not read (``None``)."""
    budget, hops = MAX_FORWARDED, MAX_HOPS
    for value in reversed(values):
        if len(value) > budget:
            yield None
            return
        budget -= len(value)
        nodes = _forwarded_nodes(_text(value))
        for node in reversed(nodes):
            if hops == 0:
                yield None
                return
            hops -= 1
            yield parse_node(node) if node is not None else None


def _forwarded_nodes(line: str) -> list[str | None]:
    """The ``for=`` values of one RFC 7239 ``Forwarded`` line, ``None`` for an element without
    one. A syntax error ends the line with one ``None``: what follows cannot be told apart.
    Nodes are parsed by the walk, only as far as it goes."""
    entries: list[str | None] = []
    pos, end = 0, len(line)
    while True:
        while pos < end and line[pos] in " \t,":
            pos += 1  # empty list elements and whitespace between elements
        if pos >= end:
            return entries
        node: str | None = None
        seen: set[str] = set()
        while True:
            pair = _PAIR.match(line, pos)
            if pair is None:
                entries.append(None)
                return entries
            name = pair[1].lower()
            if name in seen:  # a parameter twice in one element is invalid (RFC 7239, 4)
                entries.append(None)
                return entries
            seen.add(name)
            if name == "for":
                quoted = pair[2]
                node = _UNQUOTE.sub(r"\1", quoted) if quoted is not None else pair[3]
            pos = pair.end()
            if pos < end and line[pos] == ";":
                pos += 1
                continue
            if pos < end and line[pos] != ",":
                entries.append(None)
                return entries
            break
        entries.append(node)


def _network(value: object) -> IPNetwork:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        network: IPNetwork = value
    elif isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        network = ipaddress.ip_network(value)
    elif isinstance(value, str):
        try:
            network = ipaddress.ip_network(value.strip())
        except ValueError as exc:
            raise ConfigurationError(
                f"trusted: {value!r} is not an IP address or network ({exc}); expected "
                'addresses or networks such as "10.0.0.0/8", "127.0.0.1" or "::1"'
            ) from None
    else:
        raise ConfigurationError(
            f"trusted: {value!r} is a {type(value).__name__}; expected a string such as "
            '"10.0.0.0/8"'
        )
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        # Addresses are compared after IPv4-mapped ones become IPv4; so are networks.
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class ClientIP:
    """Resolve the client address of a request behind zero or more trusted proxies."""

    __slots__ = ("_header", "_hosts", "_networks", "trusted")

    def __init__(
        self,
        trusted: Iterable[str] = (),
        *,
        header: Literal["x-forwarded-for", "forwarded"] = "x-forwarded-for",
    ) -> None:
        """``trusted``: the proxies' addresses and networks; ``header``: the one they set.

        Raises `ConfigurationError` for an entry that is not an address or network (a network
        with host bits set, ``"10.0.0.1/8"``, is refused: it is usually a typo for a /32).
        """
        if isinstance(trusted, str):
            trusted = (trusted,)
        if header not in ("x-forwarded-for", "forwarded"):
            raise ConfigurationError(
                f'header: {header!r} is not supported; expected "x-forwarded-for" or "forwarded"'
            )
        networks = tuple(dict.fromkeys(_network(value) for value in trusted))
        self.trusted: tuple[IPNetwork, ...] = networks
        """The trusted networks, IPv4-mapped ones as IPv4."""
        self._header = header
        self._hosts = frozenset(n.network_address for n in networks if n.num_addresses == 1)
        self._networks = tuple(n for n in networks if n.num_addresses > 1)

    def is_trusted(self, address: IPAddress) -> bool:
        if address in self._hosts:
            return True
        return any(address in network for network in self._networks)

    def resolve(self, peer: str | None, headers: Headers) -> str:
        """The client address: the peer's, or the rightmost untrusted one it forwarded.

        ``peer`` is the connection's remote host (ASGI ``scope["client"][0]``, WSGI
        ``REMOTE_ADDR``); ``headers`` a mapping of header names (any case) to values, or ASGI
        raw headers (``[(b"x-forwarded-for", b"...")]``, decoded as Latin-1).
        """
        if not isinstance(peer, str) or not peer:
            return UNKNOWN
        address = _address(peer) if len(peer) <= MAX_PEER else None
        if address is None:
            address = parse_node(peer) if len(peer) <= MAX_NODE else None
        if address is None:
            return UNKNOWN  # never the peer's own text: it may be a client's words
        if not (self._hosts or self._networks) or not self.is_trusted(address):
            return str(address)
        walk = _xff_from_right if self._header == "x-forwarded-for" else _forwarded_from_right
        for entry in walk(_lines(headers, self._header)):
            if entry is None:
                break  # never trust a malformed value, nor anything left of it
            address = entry
            if not self.is_trusted(address):
                break
        return str(address)


def _lines(headers: object, name: str) -> list[Raw]:
    """Every value of header ``name``, in order, from a mapping or ASGI raw headers (bytes are
    left undecoded: only the part the walk reads is decoded)."""
    raw = name.encode("latin-1")
    found: list[Raw] = []
    try:
        if isinstance(headers, Mapping):
            items: Iterable[object] = headers.items()
            # A Starlette Headers mapping gives every line from items(); a dict, one per key.
        elif isinstance(headers, Iterable) and not isinstance(headers, (str, bytes)):
            items = headers
        else:
            return found
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                continue
            key, value = item
            if isinstance(key, bytes):
                if key.lower() != raw:
                    continue
            elif not isinstance(key, str) or key.lower() != name:
                continue
            if isinstance(value, (bytes, str)):
                found.append(value)
    except Exception:  # a broken mapping is no reason to fail the request: use the peer
        return []
    return found


def subject_for_ip(ip: str, *, ipv6_prefix: int = 64) -> str:
    """The subject that an anonymous client is counted as: ``"ip:203.0.113.7"``.

    IPv6 addresses are grouped by their /64 by default (``"ip:2001:db8:1:2::/64"``): one host
    or household usually holds a whole /64 and can rotate through it at will, so counting single
    addresses would let one client multiply its limits. ``ipv6_prefix=128`` counts each address.
    Anything that is not an IP address (`UNKNOWN`, a peer's text) is ``"ip:unknown"``: a
    subject is never made of request text.
    """
    if not 0 <= ipv6_prefix <= 128:
        raise ValueError(f"ipv6_prefix: {ipv6_prefix!r} is out of range; expected 0 to 128")
    address = _address(ip) if isinstance(ip, str) else None
    if address is None:
        return f"ip:{UNKNOWN}"
    if isinstance(address, ipaddress.IPv6Address) and ipv6_prefix < 128:
        network = ipaddress.IPv6Network((address, ipv6_prefix), strict=False)
        return f"ip:{network}"
    return f"ip:{address}"
