"""Webhook destinations: only public addresses, checked again at delivery.

No test resolves or dials a real host: every check gets a fake resolver with chosen answers.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator, Sequence

import pytest

from celeriac.platform.webhooks.destinations import (
    Destination,
    IPAddress,
    IPNetwork,
    Resolver,
    UnsafeDestination,
    check_destination,
    parse_allowed_networks,
    resolve_host,
)

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:4700::1111"
LOOPBACK_ONLY = parse_allowed_networks(["127.0.0.0/8"])


def answers(*addresses: str) -> Resolver:
    """A resolver that gives the same addresses for every name."""

    def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in addresses]

    return resolve


def must_not_resolve(host: str, port: int) -> list[IPAddress]:
    raise AssertionError(f"{host} should have been refused or used as a literal")


def check(
    url: str,
    resolve: Resolver = must_not_resolve,
    *,
    allow_http: bool = False,
    allowed: Sequence[IPNetwork] = (),
) -> Destination:
    return check_destination(url, allow_http=allow_http, allowed_networks=allowed, resolve=resolve)


# (category, address) pairs: every one must be refused, whether a name resolves to it or
# it is written in the URL.
BLOCKED = [
    ("loopback", "127.0.0.1"),
    ("loopback", "127.255.255.254"),
    ("loopback", "::1"),
    ("private", "10.0.0.5"),
    ("private", "172.16.0.1"),
    ("private", "172.31.255.254"),
    ("private", "192.168.1.1"),
    ("private", "fc00::1"),
    ("private", "fd12:3456:789a::1"),
    ("link-local", "169.254.1.1"),
    ("link-local", "fe80::1"),
    ("carrier-grade NAT", "100.64.0.1"),
    ("carrier-grade NAT", "100.127.255.254"),
    ("multicast", "224.0.0.1"),
    ("multicast", "239.255.255.250"),
    ("multicast", "ff02::1"),
    ("multicast", "ff0e::1"),
    ("unspecified", "0.0.0.0"),
    ("unspecified", "::"),
    ("this network", "0.1.2.3"),
    ("reserved", "240.0.0.1"),
    ("reserved", "4000::1"),
    ("reserved", "100::1"),
    ("broadcast", "255.255.255.255"),
    ("site-local", "fec0::1"),
    ("documentation", "192.0.2.1"),
    ("documentation", "2001:db8::1"),
    ("teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2"),
    ("mapped", "::ffff:127.0.0.1"),
    ("mapped", "::ffff:10.0.0.5"),
    ("mapped", "::ffff:100.64.0.1"),
    ("mapped", "::ffff:7f00:1"),
    ("compatible", "::127.0.0.1"),
    ("compatible", "::10.0.0.5"),
    ("nat64", "64:ff9b::127.0.0.1"),
    ("nat64", "64:ff9b::a9fe:a9fe"),
    ("nat64", "64:ff9b::c0a8:101"),
    ("nat64 local-use", "64:ff9b:1::a00:5"),
    ("6to4", "2002:7f00:1::1"),
    ("6to4", "2002:a00:5::1"),
    ("6to4", "2002:a9fe:a9fe::1"),
    ("metadata", "169.254.169.254"),
    ("metadata", "169.254.170.2"),
    ("metadata", "fd00:ec2::254"),
    ("metadata", "100.100.100.200"),
    ("metadata", "192.0.0.192"),
    ("metadata", "::ffff:169.254.169.254"),
]
BLOCKED_IDS = [f"{category}-{address}" for category, address in BLOCKED]

ALLOWED = [
    PUBLIC_V4,
    PUBLIC_V6,
    "1.1.1.1",
    "::ffff:93.184.215.14",  # IPv4-mapped public address
    "64:ff9b::5db8:d70e",  # NAT64 of 93.184.215.14, as DNS64 returns on IPv6-only networks
    "2002:5db8:d70e::1",  # 6to4 of a public address
]


def shown(address: str) -> str:
    """How messages print an address (3.11 prints ::ffff:127.0.0.1 as ::ffff:7f00:1)."""
    return str(ipaddress.ip_address(address))


def url_for(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"https://{host}/hook"


@pytest.mark.parametrize(("category", "address"), BLOCKED, ids=BLOCKED_IDS)
def test_name_resolving_to_a_blocked_address_is_refused(category: str, address: str) -> None:
    expected = rf"^host hooks\.example resolves to {re.escape(shown(address))}, "
    with pytest.raises(UnsafeDestination, match=expected):
        check("https://hooks.example/hook", answers(address))


@pytest.mark.parametrize(("category", "address"), BLOCKED, ids=BLOCKED_IDS)
def test_blocked_address_as_literal_host_is_refused(category: str, address: str) -> None:
    with pytest.raises(UnsafeDestination, match="may only call public internet addresses"):
        check(url_for(address))


@pytest.mark.parametrize(
    ("address", "phrase"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.0.0.5", "a private address"),
        ("fd12:3456:789a::1", "a private address"),
        ("169.254.1.1", "a link-local address"),
        ("100.64.0.1", "a carrier-grade NAT address"),
        ("224.0.0.1", "a multicast address"),
        ("::", "an unspecified address"),
        ("255.255.255.255", "the broadcast address"),
        ("240.0.0.1", "a reserved address"),
        ("fec0::1", "a site-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("::ffff:127.0.0.1", "an IPv4-mapped address embedding 127.0.0.1, a loopback address"),
        ("64:ff9b::a00:5", "a NAT64 address embedding 10.0.0.5, a private address"),
        ("2002:a9fe:a9fe::1", "a 6to4 address embedding 169.254.169.254, a cloud metadata address"),
        ("::127.0.0.1", "an IPv4-compatible address embedding 127.0.0.1, a loopback address"),
    ],
)
def test_refusal_names_the_kind_of_address(address: str, phrase: str) -> None:
    with pytest.raises(UnsafeDestination) as excinfo:
        check("https://internal.example/", answers(address))
    assert f"resolves to {shown(address)}, {phrase}" in str(excinfo.value)


def test_message_is_actionable() -> None:
    with pytest.raises(UnsafeDestination) as excinfo:
        check("https://internal.example/", answers("10.0.0.5"))
    assert str(excinfo.value) == (
        "host internal.example resolves to 10.0.0.5, a private address; "
        "webhooks may only call public internet addresses"
    )


@pytest.mark.parametrize("address", ALLOWED)
def test_public_address_passes(address: str) -> None:
    destination = check("https://hooks.example/hook", answers(address))
    assert destination.addresses == (ipaddress.ip_address(address),)


@pytest.mark.parametrize("address", [PUBLIC_V4, PUBLIC_V6])
def test_public_literal_passes_without_resolving(address: str) -> None:
    destination = check(url_for(address))
    assert destination.host == address
    assert destination.addresses == (ipaddress.ip_address(address),)


def test_destination_carries_what_delivery_needs() -> None:
    calls: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[IPAddress]:
        calls.append((host, port))
        return [ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6)]

    destination = check("HTTPS://Hooks.Example:8443/in/bound?a=1&b=2#fragment", resolve)
    assert calls == [("hooks.example", 8443)]
    assert destination == Destination(
        scheme="https",
        host="hooks.example",
        port=8443,
        path="/in/bound?a=1&b=2",
        addresses=(ipaddress.ip_address(PUBLIC_V4), ipaddress.ip_address(PUBLIC_V6)),
    )
    assert destination.url == "https://hooks.example:8443/in/bound?a=1&b=2"


def test_default_ports_and_empty_path() -> None:
    https = check("https://hooks.example", answers(PUBLIC_V4))
    assert (https.port, https.path, https.url) == (443, "/", "https://hooks.example/")
    http = check("http://hooks.example?x=1", answers(PUBLIC_V4), allow_http=True)
    assert (http.port, http.path) == (80, "/?x=1")
    ipv6 = check(f"https://[{PUBLIC_V6}]:8443/")
    assert ipv6.url == f"https://[{PUBLIC_V6}]:8443/"


def test_allowlisted_loopback_passes() -> None:
    url = "http://localhost:8000/hook"
    destination = check(url, answers("127.0.0.1"), allow_http=True, allowed=LOOPBACK_ONLY)
    assert destination.addresses == (ipaddress.IPv4Address("127.0.0.1"),)
    assert check("http://127.0.0.1:8000/", allow_http=True, allowed=LOOPBACK_ONLY)
    # The mapped form reaches the same host, so the IPv4 allowlist covers it.
    assert check("https://localhost/", answers("::ffff:127.0.0.1"), allowed=LOOPBACK_ONLY)


@pytest.mark.parametrize("address", ["::1", "10.0.0.5", "192.168.1.1", "fc00::1"])
def test_allowlist_covers_only_its_networks(address: str) -> None:
    with pytest.raises(UnsafeDestination):
        check("https://localhost/", answers(address), allowed=LOOPBACK_ONLY)


def test_allowlist_admits_private_networks() -> None:
    allowed = parse_allowed_networks(["10.0.0.0/8", "fd00::/8"])
    assert check("https://internal.example/", answers("10.1.2.3", "fd12::1"), allowed=allowed)


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"])
def test_metadata_is_refused_even_when_allowlisted(address: str) -> None:
    allowed = parse_allowed_networks(["169.254.0.0/16", "fd00::/8", "100.64.0.0/10"])
    with pytest.raises(UnsafeDestination, match="cloud metadata"):
        check("https://internal.example/", answers(address), allowed=allowed)


@pytest.mark.parametrize(
    ("addresses", "blocked"),
    [
        ((PUBLIC_V4, "10.0.0.5"), "10.0.0.5"),
        (("10.0.0.5", PUBLIC_V4), "10.0.0.5"),
        ((PUBLIC_V6, "::1"), "::1"),
        ((PUBLIC_V4, PUBLIC_V6, "fe80::1"), "fe80::1"),
    ],
)
def test_any_blocked_address_refuses_the_host(addresses: tuple[str, ...], blocked: str) -> None:
    with pytest.raises(UnsafeDestination, match=f"resolves to {re.escape(blocked)}, "):
        check("https://mixed.example/", answers(*addresses))


def test_dns_rebinding_is_caught_by_the_second_check() -> None:
    """Registration sees a public address; by delivery the name points at loopback."""
    replies: Iterator[str] = iter([PUBLIC_V4, "127.0.0.1"])

    def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(next(replies))]

    url = "https://rebind.example/hook"
    registered = check(url, rebinding)
    assert registered.addresses == (ipaddress.IPv4Address(PUBLIC_V4),)
    with pytest.raises(UnsafeDestination, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        check(url, rebinding)


@pytest.mark.parametrize(
    "url", ["http://hooks.example/", "ftp://hooks.example/", "file:///etc/passwd", "hooks.example"]
)
def test_only_https_by_default(url: str) -> None:
    with pytest.raises(UnsafeDestination, match=r"^webhook URL must use https$"):
        check(url, answers(PUBLIC_V4))


def test_http_only_when_allowed() -> None:
    assert check("http://hooks.example/", answers(PUBLIC_V4), allow_http=True).scheme == "http"
    with pytest.raises(UnsafeDestination, match="must use http or https"):
        check("gopher://hooks.example/", answers(PUBLIC_V4), allow_http=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@hooks.example/",
        "https://user@hooks.example/",
        "https://:@hooks.example/",
        "https://hooks.example@127.0.0.1/",
        "https://hooks.example\\@127.0.0.1/",
    ],
)
def test_userinfo_is_refused(url: str) -> None:
    with pytest.raises(UnsafeDestination, match="user name or password"):
        check(url, answers(PUBLIC_V4))


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://017700000001/",  # ... as one octal number
        "http://0x7f000001/",  # ... as one hex number
        "http://0x7f.0.0.1/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://127.1/",
        "http://127.0.1/",
        "http://127.000.000.001/",
        "http://127.0.0.1./",
        "http://0/",
        "http://0x/",
        "http://1.2.3.4.5/",
        "http://169.254.43518/",  # 169.254.169.254
        "http://0xA9FEA9FE/",
        "http://hooks.example.0x10/",
        "http://hooks.example.123/",
    ],
)
def test_numeric_ipv4_encodings_are_refused(url: str) -> None:
    # The resolver would answer with a public address: only the host syntax check stops these.
    with pytest.raises(UnsafeDestination, match="non-standard form"):
        check(url, answers(PUBLIC_V4), allow_http=True, allowed=LOOPBACK_ONLY)


@pytest.mark.parametrize(
    "url",
    ["https://0x7f.hooks.example/", "https://123.hooks.example/", "https://1e100.example/"],
)
def test_numeric_labels_before_the_last_are_names(url: str) -> None:
    assert check(url, answers(PUBLIC_V4))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https:///hook", "must have a host"),
        ("https://:443/hook", "must have a host"),
        ("https://hooks.example:0/", "not between 1 and 65535"),
        ("https://hooks.example:65536/", "malformed"),
        ("https://hooks.example:99999/", "malformed"),
        ("https://hooks.example:-1/", "malformed"),
        ("https://hooks.example:http/", "malformed"),
        ("https://[::1/", "malformed"),
        ("https://[fe80::1%25eth0]/", "zone|malformed"),
        ("https://[v1.hooks.example]/", "IPv6|malformed"),
        ("https://[127.0.0.1]/", "IPv6|malformed"),
        ("https://hooks.example/\n", "control characters"),
        ("https://hooks.example/\t", "control characters"),
        (" https://127.0.0.1/", "control characters"),
        ("https://hooks\u200b.example/", "control characters"),
        ("https://ex ample.com/", "control characters"),
        ("https://h\u00e4user.example/", "ASCII"),
        ("https://\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11/", "ASCII"),
        ("https://%31%32%37.0.0.1/", "not a valid host name"),
        ("https://127.0.0.1\\.hooks.example/", "not a valid host name"),
        ("https://hooks..example/", "not a valid host name"),
        ("https://-hooks.example/", "not a valid host name"),
        ("https://" + "a" * 64 + ".example/", "not a valid host name"),
    ],
)
def test_malformed_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeDestination, match=reason):
        check(url, answers(PUBLIC_V4))


def test_port_range_edges_pass() -> None:
    assert check("https://hooks.example:1/", answers(PUBLIC_V4)).port == 1
    assert check("https://hooks.example:65535/", answers(PUBLIC_V4)).port == 65535
    # RFC 3986: an empty port means the scheme's default.
    assert check("https://hooks.example:/", answers(PUBLIC_V4)).port == 443


def test_url_length_limit() -> None:
    base = "https://hooks.example/"
    assert check(base + "a" * (2048 - len(base)), answers(PUBLIC_V4))
    with pytest.raises(UnsafeDestination, match="longer than 2048"):
        check(base + "a" * (2049 - len(base)), answers(PUBLIC_V4))


@pytest.mark.parametrize(
    "error", [socket.gaierror(socket.EAI_NONAME, "Name or service not known"), OSError("boom")]
)
def test_resolution_failure_is_refused(error: OSError) -> None:
    def failing(host: str, port: int) -> list[IPAddress]:
        raise error

    with pytest.raises(UnsafeDestination, match=r"^cannot resolve host nowhere\.example"):
        check("https://nowhere.example/", failing)


def test_no_addresses_is_refused() -> None:
    with pytest.raises(UnsafeDestination, match="resolves to no addresses"):
        check("https://empty.example/", answers())


def test_unsafe_destination_is_a_value_error() -> None:
    assert issubclass(UnsafeDestination, ValueError)


def test_parse_allowed_networks() -> None:
    assert parse_allowed_networks([" 127.0.0.0/8", "fd00::/8", "10.1.2.3"]) == [
        ipaddress.IPv4Network("127.0.0.0/8"),
        ipaddress.IPv6Network("fd00::/8"),
        ipaddress.IPv4Network("10.1.2.3/32"),
    ]
    assert parse_allowed_networks([]) == []


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-a-cidr", "10.0.0.1/8", "", "fd00::/129"])
def test_parse_allowed_networks_names_the_bad_cidr(bad: str) -> None:
    with pytest.raises(ValueError, match=f"invalid CIDR '{bad}'"):
        parse_allowed_networks(["127.0.0.0/8", bad])


def test_parse_allowed_networks_refuses_a_lone_string() -> None:
    with pytest.raises(TypeError):
        parse_allowed_networks("127.0.0.0/8")


def test_resolve_host_deduplicates_getaddrinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    # getaddrinfo is replaced: the real resolver is never asked about any name.
    def fake_getaddrinfo(host: str, port: int, **kwargs: object) -> list[tuple[object, ...]]:
        assert (host, port) == ("hooks.example", 443)
        tcp, proto = socket.SOCK_STREAM, socket.IPPROTO_TCP
        return [
            (socket.AF_INET6, tcp, proto, "", (PUBLIC_V6, 443, 0, 0)),
            (socket.AF_INET, tcp, proto, "", (PUBLIC_V4, 443)),
            (socket.AF_INET, tcp, proto, "", (PUBLIC_V4, 443)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert resolve_host("hooks.example", 443) == [
        ipaddress.IPv6Address(PUBLIC_V6),
        ipaddress.IPv4Address(PUBLIC_V4),
    ]
