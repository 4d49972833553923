"""tollway.http.clientip: the client address, behind trusted proxies only."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway.errors import ConfigurationError
from tollway.http.clientip import (
    MAX_FORWARDED,
    MAX_HOPS,
    UNKNOWN,
    ClientIP,
    parse_node,
    subject_for_ip,
)

CLIENT = "203.0.113.7"
PROXY = "10.0.0.1"
TRUSTED = ["10.0.0.0/8", "127.0.0.1", "::1"]


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode("latin-1")) for value in values]


def fwd(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"forwarded", value.encode("latin-1")) for value in values]


BEHIND = ClientIP(TRUSTED)
BEHIND_FWD = ClientIP(TRUSTED, header="forwarded")


# -- spoofing -------------------------------------------------------------------------------


def test_nothing_is_trusted_by_default() -> None:
    resolver = ClientIP()
    assert resolver.resolve(CLIENT, xff("1.2.3.4")) == CLIENT
    assert resolver.resolve("127.0.0.1", xff("1.2.3.4")) == "127.0.0.1"
    assert ClientIP(header="forwarded").resolve(PROXY, fwd("for=1.2.3.4")) == PROXY


def test_client_sent_header_is_ignored_unless_the_peer_is_trusted() -> None:
    assert BEHIND.resolve(CLIENT, xff("1.2.3.4")) == CLIENT
    assert BEHIND.resolve(CLIENT, {"X-Forwarded-For": "10.0.0.5"}) == CLIENT
    assert BEHIND_FWD.resolve(CLIENT, fwd("for=1.2.3.4")) == CLIENT


def test_client_prepended_values_are_skipped_by_the_right_to_left_walk() -> None:
    # The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the real address.
    assert BEHIND.resolve(PROXY, xff(f"1.2.3.4, {CLIENT}")) == CLIENT
    assert BEHIND.resolve(PROXY, xff("1.2.3.4", CLIENT)) == CLIENT
    # A client pretending to be an internal host is still the rightmost untrusted one.
    assert BEHIND.resolve(PROXY, xff(f"10.9.9.9, {CLIENT}")) == CLIENT


def test_only_the_configured_header_is_read() -> None:
    both = [*xff(CLIENT), *fwd("for=1.2.3.4")]
    assert BEHIND.resolve(PROXY, both) == CLIENT
    assert BEHIND_FWD.resolve(PROXY, [*fwd(f"for={CLIENT}"), *xff("1.2.3.4")]) == CLIENT


def test_header_must_be_known() -> None:
    with pytest.raises(ConfigurationError, match="header"):
        ClientIP(header="x-real-ip")  # type: ignore[arg-type]


# -- chains ----------------------------------------------------------------------------------


def test_chain_of_trusted_proxies() -> None:
    headers = xff(f"{CLIENT}, 10.1.1.1, 10.2.2.2")
    assert BEHIND.resolve("127.0.0.1", headers) == CLIENT


def test_untrusted_hop_in_the_middle_is_the_client() -> None:
    # 198.51.100.9 is not ours: whatever it forwarded could be invented.
    headers = xff(f"{CLIENT}, 198.51.100.9, 10.2.2.2")
    assert BEHIND.resolve(PROXY, headers) == "198.51.100.9"


def test_all_trusted_gives_the_leftmost() -> None:
    assert BEHIND.resolve(PROXY, xff("10.3.3.3, 10.2.2.2")) == "10.3.3.3"


def test_trusted_peer_without_header_is_the_peer() -> None:
    assert BEHIND.resolve(PROXY, []) == PROXY
    assert BEHIND.resolve(PROXY, {}) == PROXY
    assert BEHIND.resolve(PROXY, xff("")) == PROXY
    assert BEHIND.resolve(PROXY, xff(" , ,")) == PROXY


def test_multiple_lines_combine_in_order() -> None:
    headers = [
        (b"x-forwarded-for", b"1.1.1.1"),
        (b"host", b"example.com"),
        (b"X-Forwarded-For", b"2.2.2.2, 10.0.0.7"),
        (b"x-forwarded-for", b"10.0.0.8"),
    ]
    assert BEHIND.resolve(PROXY, headers) == "2.2.2.2"


def test_mapping_headers_any_case() -> None:
    assert BEHIND.resolve(PROXY, {"x-forwarded-for": CLIENT}) == CLIENT
    assert BEHIND.resolve(PROXY, {"X-FORWARDED-FOR": CLIENT}) == CLIENT
    assert BEHIND.resolve(PROXY, {"x-forwarded-for": CLIENT.encode()}) == CLIENT  # type: ignore[arg-type]


def test_starlette_headers_give_every_line() -> None:
    from starlette.datastructures import Headers

    headers = Headers(raw=[(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"10.0.0.9")])
    assert BEHIND.resolve(PROXY, headers) == "1.1.1.1"


# -- entry syntax -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("  203.0.113.7\t", "203.0.113.7"),
        ("203.0.113.7:4711", "203.0.113.7"),
        ("203.0.113.7:1", "203.0.113.7"),
        ("203.0.113.7:65535", "203.0.113.7"),
        ("[2001:db8::1]:65535", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:4711", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::1"),
    ],
)
def test_xff_entry_forms(value: str, expected: str) -> None:
    assert BEHIND.resolve(PROXY, xff(value)) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"for={CLIENT}", CLIENT),
        (f"For={CLIENT}", CLIENT),
        (f'for="{CLIENT}"', CLIENT),
        (f'for="{CLIENT}:4711"', CLIENT),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]:_port"', "2001:db8:cafe::17"),
        (f"for={CLIENT};proto=http;by=203.0.113.43", CLIENT),
        (f"proto=https;for={CLIENT};host=example.com", CLIENT),
        (f'for = "{CLIENT}" ; proto=https', CLIENT),
        (f"for=192.0.2.43, for={CLIENT}", CLIENT),
        (f"for={CLIENT}, for=10.0.0.3", CLIENT),
        (f'host="a,b;c";for={CLIENT}', CLIENT),
        (f'for="\\{CLIENT[0]}{CLIENT[1:]}"', CLIENT),  # quoted-pair inside a quoted-string
        (f"for={CLIENT},, ,for=10.0.0.3", CLIENT),
    ],
)
def test_forwarded_syntax(value: str, expected: str) -> None:
    assert BEHIND_FWD.resolve(PROXY, fwd(value)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "for=_hidden",
        "for=unknown",
        "for=UNKNOWN",
        'for="_SEVKISEK"',
        "proto=https",  # no for= at all
        'for="[2001:db8::1"',
        "for=not-an-ip",
        'for="1.2.3.4:port"',
        'for="1.2.3.4:99999"',
        'for="[2001:db8::1]:65536"',
    ],
)
def test_forwarded_unusable_nodes_stop_at_the_proxy(value: str) -> None:
    # The client prepended a good-looking address; the unusable hop hides it.
    headers = fwd(f"for={CLIENT}", value + ", for=10.0.0.4")
    assert BEHIND_FWD.resolve(PROXY, headers) == "10.0.0.4"


@pytest.mark.parametrize(
    "value",
    [
        "for=1.2.3.4;for=5.6.7.8",  # a parameter twice
        "for=1.2.3.4 junk",
        'for="unterminated',
        "=1.2.3.4",
        "for",
        "for=1.2.3.4;",
    ],
)
def test_forwarded_syntax_errors_end_their_line(value: str) -> None:
    # After a syntax error the rest of the line cannot be told apart: even the proxy's own
    # ", for=10.0.0.4" is not used, and the answer is the peer.
    headers = fwd(f"for={CLIENT}", value + ", for=10.0.0.4")
    assert BEHIND_FWD.resolve(PROXY, headers) == PROXY


def test_forwarded_unquoted_brackets_are_accepted() -> None:
    assert BEHIND_FWD.resolve(PROXY, fwd("for=[2001:db8::1]")) == "2001:db8::1"


@pytest.mark.parametrize(
    "value",
    [
        "not-an-ip",
        "unknown",
        "_hidden",
        "1.2.3",
        "1.2.3.4.5",
        "01.2.3.4",
        "256.1.1.1",
        "1.2.3.4:port",
        "1.2.3.4:123456",
        "1.2.3.4:99999",
        "1.2.3.4:65536",
        "1.2.3.4:0",
        "1.2.3.4:080",
        "1.2.3.4:",
        "1.2.3.4:-1",
        "1.2.3.4:+80",
        "1.2.3.4:80:80",
        "[2001:db8::1]:99999",
        "[2001:db8::1]:0",
        "[2001:db8::1]:",
        "[2001:db8::1]x",
        "[1.2.3.4]",
        "[2001:db8::1",
        "2001:db8::1:4711:1:1:1:1:1",
        "1.2.3.4 5.6.7.8",
        "a" * 500,
        "\x00",
        "1.2.3.4\n",
    ],
)
def test_malformed_xff_stops_the_walk_at_the_last_trusted_hop(value: str) -> None:
    headers = xff(f"{CLIENT}, {value}, 10.0.0.4")
    assert BEHIND.resolve(PROXY, headers) == "10.0.0.4"
    assert BEHIND.resolve(PROXY, xff(f"{CLIENT}, {value}")) == PROXY


def test_broken_quoting_in_one_line_does_not_swallow_the_next() -> None:
    headers = fwd('for="1.2.3.4', f"for={CLIENT}")
    assert BEHIND_FWD.resolve(PROXY, headers) == CLIENT


def test_non_latin1_bytes_are_no_problem() -> None:
    headers = [(b"x-forwarded-for", b"\xff\xfe, " + CLIENT.encode())]
    assert BEHIND.resolve(PROXY, headers) == CLIENT


# -- IPv6 and trust lists ------------------------------------------------------------------------


def test_ipv6_peers_and_proxies() -> None:
    assert BEHIND.resolve("::1", xff("2001:db8::7")) == "2001:db8::7"
    assert BEHIND.resolve("2001:db8::99", xff(CLIENT)) == "2001:db8::99"
    resolver = ClientIP(["2001:db8:ffff::/48"])
    assert resolver.resolve("2001:db8:ffff::1", xff("2001:db8::7, 2001:db8:ffff::2")) == (
        "2001:db8::7"
    )


def test_ipv4_mapped_peers_and_networks_count_as_ipv4() -> None:
    assert BEHIND.resolve("::ffff:10.0.0.1", xff(CLIENT)) == CLIENT
    assert BEHIND.resolve("::ffff:203.0.113.8", xff("1.2.3.4")) == "203.0.113.8"
    mapped = ClientIP(["::ffff:10.0.0.0/104"])
    assert mapped.trusted == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert mapped.resolve("10.1.2.3", xff(CLIENT)) == CLIENT
    assert BEHIND.resolve(PROXY, xff("::ffff:10.0.0.2, ::ffff:" + CLIENT)) == CLIENT


def test_trusted_accepts_addresses_networks_and_objects() -> None:
    resolver = ClientIP(
        [" 192.168.0.0/16", ipaddress.ip_address("172.16.0.1"), ipaddress.ip_network("fd00::/8")]  # type: ignore[list-item]
    )
    assert resolver.resolve("192.168.1.1", xff(CLIENT)) == CLIENT
    assert resolver.resolve("172.16.0.1", xff(CLIENT)) == CLIENT
    assert resolver.resolve("172.16.0.2", xff(CLIENT)) == "172.16.0.2"
    assert resolver.resolve("fd12::1", xff(CLIENT)) == CLIENT
    assert ClientIP("10.0.0.0/8").resolve(PROXY, xff(CLIENT)) == CLIENT


@pytest.mark.parametrize("value", ["10.0.0.1/8", "localhost", "", "1.2.3.4/33", 42, None])
def test_bad_trusted_entries_are_configuration_errors(value: object) -> None:
    with pytest.raises(ConfigurationError, match="trusted"):
        ClientIP([value])  # type: ignore[list-item]


# -- peers -------------------------------------------------------------------------------------


def test_peer_forms() -> None:
    assert BEHIND.resolve(None, xff(CLIENT)) == UNKNOWN
    assert BEHIND.resolve("", xff(CLIENT)) == UNKNOWN
    # A peer that is not an IP address is never its own text (issue 11: a server rewriting the
    # peer from X-Forwarded-For let a client choose its subject).
    assert BEHIND.resolve("testclient", xff(CLIENT)) == UNKNOWN
    assert BEHIND.resolve("/run/app.sock", xff(CLIENT)) == UNKNOWN
    assert BEHIND.resolve("anything-i-like", []) == UNKNOWN
    assert ClientIP().resolve("anything-i-like", []) == UNKNOWN
    assert BEHIND.resolve("1.2.3.4:99999", []) == UNKNOWN
    assert BEHIND.resolve("bad\npeer", xff(CLIENT)) == UNKNOWN
    assert BEHIND.resolve("x" * 300, xff(CLIENT)) == UNKNOWN
    assert BEHIND.resolve("2001:DB8::1", []) == "2001:db8::1"
    assert BEHIND.resolve("[::1]:5000", xff(CLIENT)) == CLIENT
    assert BEHIND.resolve("10.0.0.1:5000", xff(CLIENT)) == CLIENT
    assert BEHIND.resolve(42, xff(CLIENT)) == UNKNOWN  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers", [None, 42, "x-forwarded-for: 1.2.3.4", [(1, 2), ("a",)], [b"x"]]
)
def test_odd_header_containers_fall_back_to_the_peer(headers: object) -> None:
    assert BEHIND.resolve(PROXY, headers) == PROXY  # type: ignore[arg-type]


def test_a_broken_mapping_falls_back_to_the_peer() -> None:
    class Broken(dict[str, str]):
        def items(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    assert BEHIND.resolve(PROXY, Broken()) == PROXY


# -- subjects ------------------------------------------------------------------------------------


def test_subject_for_ip() -> None:
    assert subject_for_ip("203.0.113.7") == "ip:203.0.113.7"
    assert subject_for_ip("::ffff:203.0.113.7") == "ip:203.0.113.7"
    assert subject_for_ip("2001:db8:1:2:aaaa::1") == "ip:2001:db8:1:2::/64"
    assert subject_for_ip("2001:db8:1:2:aaaa::1", ipv6_prefix=128) == "ip:2001:db8:1:2:aaaa::1"
    assert subject_for_ip("2001:db8:1:2:aaaa::1", ipv6_prefix=48) == "ip:2001:db8:1::/48"
    assert subject_for_ip(UNKNOWN) == "ip:unknown"
    assert subject_for_ip("anything-i-like") == "ip:unknown"
    assert subject_for_ip("/run/app.sock") == "ip:unknown"
    with pytest.raises(ValueError, match="ipv6_prefix"):
        subject_for_ip(CLIENT, ipv6_prefix=129)


# -- property ------------------------------------------------------------------------------------

PIECES = [*'0123456789abcdef.:[]",; =_\t\\xorFR%-', "for=", "unknown", "::ffff:", "10.0.0.2"]
HEADER_TEXT = st.lists(st.sampled_from(PIECES), max_size=30).map("".join) | st.text(max_size=40)


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@given(
    peer=st.sampled_from([PROXY, "127.0.0.1", "::1", CLIENT, "::ffff:10.0.0.1"]),
    lines=st.lists(HEADER_TEXT, max_size=4),
    forwarded=st.booleans(),
)
def test_random_headers_never_raise(peer: str, lines: list[str], forwarded: bool) -> None:
    resolver = BEHIND_FWD if forwarded else BEHIND
    name = b"forwarded" if forwarded else b"x-forwarded-for"
    headers = [(name, line.encode("utf-8")) for line in lines]
    result = resolver.resolve(peer, headers)
    assert _valid_ip(result)
    assert result == str(ipaddress.ip_address(result))  # canonical
    if peer == CLIENT:
        assert result == CLIENT  # an untrusted peer's headers never count
    assert subject_for_ip(result).startswith("ip:")


@given(peer=st.text(max_size=300), value=st.text(max_size=100))
def test_random_peers_never_raise(peer: str, value: str) -> None:
    result = BEHIND.resolve(peer, {"x-forwarded-for": value})
    assert result == UNKNOWN or _valid_ip(result)
    assert subject_for_ip(result) == "ip:unknown" or _valid_ip(result)


# -- bounded work (issue 11) -------------------------------------------------------------------


def test_a_huge_header_from_a_trusted_proxy_is_cheap() -> None:
    # 1 MB of client-written entries, then the proxy's own: read from the right, the first
    # untrusted entry ends the walk; the rest is never parsed (not even decoded).
    huge = ", ".join(["198.51.100.1"] * 80_000) + f", {CLIENT}"
    assert len(huge) > 1_000_000
    headers = xff(huge)
    start = time.perf_counter()
    for _ in range(10):
        assert BEHIND.resolve(PROXY, headers) == CLIENT
        assert BEHIND_FWD.resolve(PROXY, fwd(huge.replace(", ", ", for="))) == PROXY
    assert time.perf_counter() - start < 0.2  # a bound, not a benchmark: 20 resolves


def test_at_most_max_hops_entries_are_walked() -> None:
    # Every entry trusted: without a bound the answer would be the leftmost one, found after
    # parsing all of them; the walk stops after MAX_HOPS at the last trusted address reached.
    chain = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    header = ", ".join([CLIENT, *chain])
    assert BEHIND.resolve(PROXY, xff(header)) == chain[-MAX_HOPS]
    short = chain[-(MAX_HOPS - 1) :]
    assert BEHIND.resolve(PROXY, xff(", ".join([CLIENT, *short]))) == CLIENT
    # Across lines too, empty elements counted: a flood of commas is no way around it.
    assert BEHIND.resolve(PROXY, xff(CLIENT, "," * 100_000)) == PROXY
    lines = [f"10.0.0.{i + 1}" for i in range(MAX_HOPS)]
    assert BEHIND.resolve(PROXY, xff(CLIENT, *lines)) == lines[0]
    fwd_lines = [f"for=10.0.0.{i + 1}" for i in range(MAX_HOPS)]
    assert BEHIND_FWD.resolve(PROXY, fwd(f"for={CLIENT}", *fwd_lines)) == "10.0.0.1"
    assert BEHIND_FWD.resolve(PROXY, fwd(f"for={CLIENT}", *fwd_lines[1:])) == CLIENT


def test_only_the_last_max_forwarded_characters_are_read() -> None:
    # Padding that, read whole, would be skipped as whitespace: past the bound, the entry cut
    # in two is dropped (never read as an address) and the walk stops at the last trusted hop.
    pad = " " * MAX_FORWARDED
    assert BEHIND.resolve(PROXY, xff(f"{CLIENT}{pad[:100]}, 10.0.0.8")) == CLIENT
    assert BEHIND.resolve(PROXY, xff(f"{CLIENT}{pad}, 10.0.0.8")) == "10.0.0.8"
    # Lines count together.
    assert BEHIND.resolve(PROXY, xff(CLIENT, pad[:100], "10.0.0.8")) == CLIENT
    assert BEHIND.resolve(PROXY, xff(CLIENT, pad, "10.0.0.8")) == "10.0.0.8"
    # A Forwarded line past the bound is not read at all: its quoting reads from its start.
    assert BEHIND_FWD.resolve(PROXY, fwd(f"for={CLIENT}", "for=10.0.0.8" + pad[:100])) == CLIENT
    assert BEHIND_FWD.resolve(PROXY, fwd(f"for={CLIENT}", "for=10.0.0.8" + pad)) == PROXY
    assert BEHIND_FWD.resolve(PROXY, fwd(f"for={CLIENT}", pad, "for=10.0.0.8")) == "10.0.0.8"


def _full_walk(resolver: ClientIP, peer: str, lines: list[str]) -> str:
    """The walk as it was before it was bounded: every entry parsed, then walked from the
    right. Within the bounds the bounded walk must answer exactly the same."""
    entries = [parse_node(item) for line in lines for item in line.split(",") if item.strip()]
    address = ipaddress.ip_address(peer)
    for entry in reversed(entries):
        if entry is None:
            break
        address = entry
        if not resolver.is_trusted(address):
            break
    return str(address)


XFF_ITEMS = st.sampled_from(
    [
        *(CLIENT, PROXY, "10.0.0.2", "127.0.0.1", "198.51.100.9", "::1", "2001:db8::1"),
        *("unknown", "10.0.0.3:80", "[::1]:443", "1.2.3.4:99999", " ", "", "_x", "10.1.1.1:0"),
    ]
)


@given(lines=st.lists(st.lists(XFF_ITEMS, max_size=8).map(", ".join), max_size=4))
def test_within_the_bounds_the_walk_is_the_full_walk(lines: list[str]) -> None:
    assert sum(len(line.split(",")) for line in lines) <= MAX_HOPS
    assert BEHIND.resolve(PROXY, xff(*lines)) == _full_walk(BEHIND, PROXY, lines)
