"""Whether a webhook destination URL is safe to call (the SSRF defence).

It runs twice: when a tenant registers a URL (the API turns :class:`UnsafeDestination` into a
422 with its message) and again at delivery. A name may resolve differently the second time
(DNS rebinding), so delivery must connect to the :attr:`Destination.addresses` that were just
checked, never resolve the name again in the HTTP client.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias
from urllib.parse import SplitResult, urlsplit

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network
# (host, port) -> addresses; raises OSError when the name cannot be resolved.
Resolver: TypeAlias = Callable[[str, int], list[IPAddress]]

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"https": 443, "http": 80}

# Instance-metadata and credential endpoints. ipaddress does not know them (on 3.11
# 192.0.0.192 is even is_global) and they are refused even inside the admin allowlist: no
# webhook has a reason to reach them, and an allowlist such as 169.254.0.0/16 or 100.64.0.0/10
# must not hand out cloud credentials.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS Pod Identity
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
# Explicit networks only where ipaddress has no property: RFC 6598 shared space is neither
# is_private nor is_global, and there is no is_broadcast on addresses. Named so the message
# says what the address is.
_CARRIER_GRADE_NAT = IPv4Network("100.64.0.0/10")
_LIMITED_BROADCAST = IPv4Address("255.255.255.255")
# RFC 6052 well-known NAT64 prefix: ipaddress calls it reserved (it sits in ::/8), but on an
# IPv6-only network with DNS64 it is how public IPv4 hosts are reached, so it is judged by
# the IPv4 address it embeds.
_NAT64 = IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_MAPPED = "an IPv4-mapped address"
_NAT64_KIND = "a NAT64 address"
_PUBLIC_ONLY = "; webhooks may only call public internet addresses"

_HOST_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# WHATWG URL: a host whose last label is a number is an IPv4 address, in any of the forms
# inet_aton accepts (2130706433, 0x7f.1, 0177.0.0.1).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class UnsafeDestination(ValueError):
    """The URL may not be used as a webhook destination; the message says why and what to do."""


@dataclass(frozen=True)
class Destination:
    """A checked webhook destination: connect only to ``addresses``."""

    scheme: str  # "https", or "http" when allowed
    host: str  # lower-case name or IP literal (no brackets), for the Host header and SNI
    port: int
    path: str  # path and query as sent on the request line; "/" when the URL has none
    addresses: tuple[IPAddress, ...]  # every address the host resolved to, all checked

    @property
    def url(self) -> str:
        """The normalised URL (no fragment, default port omitted)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every IPv4/IPv6 address ``getaddrinfo`` gives for ``host``, in order, without repeats.

    Raises ``OSError`` (``socket.gaierror``) when the name does not resolve. This blocks for
    as long as the system resolver takes; call it from a worker thread in async code.
    """
    addresses: list[IPAddress] = []
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(sockaddr[0], str):
            continue
        address = ipaddress.ip_address(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def parse_allowed_networks(cidrs: Sequence[str]) -> list[IPNetwork]:
    """Parse the admin allowlist (``webhooks.allowed_cidrs``).

    Host bits must be zero ("10.0.0.1/8" is refused): such an entry is usually a typo for a
    narrower network. Raises ``ValueError`` naming the bad entry.
    """
    if isinstance(cidrs, str):  # a lone string would be read one character at a time
        raise TypeError("allowed CIDRs must be a list of strings, not one string")
    networks: list[IPNetwork] = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(f"invalid CIDR {cidr!r} in the webhook allowlist: {exc}") from exc
    return networks


def check_destination(
    url: str,
    *,
    allow_http: bool,
    allowed_networks: Sequence[IPNetwork],
    resolve: Resolver = resolve_host,
) -> Destination:
    """Check a webhook URL and every address its host resolves to.

    Refuses (with :class:`UnsafeDestination`) any scheme but https (and http when
    ``allow_http``), credentials in the URL, a missing host or bad port, URLs over 2048
    characters, and hosts with any address that is not a public unicast address outside
    ``allowed_networks``: loopback, private, link-local, carrier-grade NAT, multicast,
    unspecified, reserved, broadcast, IPv6 forms that embed such an IPv4 address, and cloud
    metadata endpoints (the last even when allowlisted). IP literals are checked without
    resolving. Returns the checked addresses, which delivery must connect to.
    """
    parts, hostname, port = _split_url(url, allow_http=allow_http)
    bracketed = parts.netloc.startswith("[")
    addresses = _checked_addresses(hostname, port, bracketed, allowed_networks, resolve)
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Destination(parts.scheme, hostname, port, path, addresses)


def _split_url(url: str, *, allow_http: bool) -> tuple[SplitResult, str, int]:
    """``url``'s parts, host and port (the scheme's default when absent); refuses what
    :func:`check_destination` refuses in the URL itself."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeDestination(f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    # urlsplit silently drops tabs and newlines and strips leading spaces, and other
    # parsers differ on them; refusing is simpler than agreeing with every one of them.
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UnsafeDestination("webhook URL must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        hostname = parts.hostname or ""
    except ValueError as exc:
        raise UnsafeDestination(f"webhook URL is malformed: {exc}") from exc

    allowed_schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed_schemes:
        wanted = "http or https" if allow_http else "https"
        raise UnsafeDestination(f"webhook URL must use {wanted}")
    if "@" in parts.netloc:
        raise UnsafeDestination("webhook URL must not contain a user name or password (user:pass@)")
    if not hostname:
        raise UnsafeDestination("webhook URL must have a host")
    if port is None:
        port = _DEFAULT_PORTS[parts.scheme]
    elif not 1 <= port <= 65535:
        raise UnsafeDestination(f"webhook URL port {port} is not between 1 and 65535")
    return parts, hostname, port


def _checked_addresses(
    hostname: str,
    port: int,
    bracketed: bool,
    allowed_networks: Sequence[IPNetwork],
    resolve: Resolver,
) -> tuple[IPAddress, ...]:
    """The addresses of ``hostname`` (itself when it is an IP literal, checked without
    resolving), every one of them allowed."""
    literal = _parse_host(hostname, bracketed=bracketed)
    if literal is not None:
        problem = _address_problem(literal, allowed_networks)
        if problem is not None:
            raise UnsafeDestination(f"host {hostname} is {problem}{_PUBLIC_ONLY}")
        return (literal,)
    try:
        addresses = tuple(resolve(hostname, port))
    except (OSError, UnicodeError) as exc:
        raise UnsafeDestination(
            f"cannot resolve host {hostname}; check the name and that it has public DNS"
        ) from exc
    if not addresses:
        raise UnsafeDestination(f"host {hostname} resolves to no addresses")
    # Every address, not the first: the HTTP client may try any of them.
    for address in addresses:
        problem = _address_problem(address, allowed_networks)
        if problem is not None:
            raise UnsafeDestination(
                f"host {hostname} resolves to {address}, {problem}{_PUBLIC_ONLY}"
            )
    return addresses


def _parse_host(hostname: str, *, bracketed: bool) -> IPAddress | None:
    """The IP literal ``hostname`` spells, or None for a DNS name; refuses anything else."""
    if bracketed or ":" in hostname:
        try:
            address = IPv6Address(hostname)
        except ValueError as exc:
            raise UnsafeDestination(f"host [{hostname}] is not a valid IPv6 address") from exc
        if address.scope_id:
            raise UnsafeDestination(f"host [{hostname}] must not carry a zone (%...)")
        return address
    if not hostname.isascii():
        # IDNA mapping would turn fullwidth digits and dots (U+FF11...) into "127.0.0.1"
        # after this check had seen a name; tenants can give the punycode form instead.
        raise UnsafeDestination(
            f"host {hostname} must be written in ASCII (use the xn-- punycode form)"
        )
    labels = hostname.removesuffix(".").split(".")
    if len(hostname) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise UnsafeDestination(f"host {hostname} is not a valid host name")
    # Numeric IPv4 forms other than canonical dotted-quad are refused, not normalised:
    # browsers, curl and inet_aton disagree on some (is "0127.0.0.1" octal?), no webhook
    # needs them, and they are a classic way past address filters. ipaddress accepts only
    # four decimal parts without leading zeros.
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            return IPv4Address(hostname)
        except ValueError as exc:
            raise UnsafeDestination(
                f"host {hostname} looks like an IPv4 address in a non-standard form; "
                "write it as four decimal numbers without leading zeros"
            ) from exc
    return None


# What refuses an address that is neither a metadata endpoint nor allowlisted, asked in
# this order: the first that holds names the address.
_REFUSED_KINDS: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda a: a.is_unspecified, "an unspecified address"),
    (lambda a: a.is_loopback, "a loopback address"),
    (lambda a: a.is_link_local, "a link-local address"),
    (lambda a: a.is_multicast, "a multicast address"),  # ipaddress: most multicast is_global
    (lambda a: a == _LIMITED_BROADCAST, "the broadcast address"),
    (lambda a: a.is_reserved, "a reserved address"),
    # is_global on 3.11
    (lambda a: isinstance(a, IPv6Address) and a.is_site_local, "a site-local address"),
    (lambda a: a.is_private, "a private address"),
    (lambda a: a in _CARRIER_GRADE_NAT, "a carrier-grade NAT address"),
    (lambda a: not a.is_global, "an address that is not publicly routable"),
)


def _address_problem(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why ``address`` may not be called (a phrase such as "a private address"), or None."""
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if any(address in network for network in allowed):
        return None
    if isinstance(address, IPv6Address):
        decided, problem = _embedding_verdict(address, allowed)
        if decided:
            return problem
    return next((kind for refused, kind in _REFUSED_KINDS if refused(address)), None)


def _embedding_verdict(
    address: IPv6Address, allowed: Sequence[IPNetwork]
) -> tuple[bool, str | None]:
    """(True, the problem or None) when the IPv4 address that ``address`` embeds decides;
    (False, None) when ``address`` is to be judged as an IPv6 address."""
    embedded = _embedded_ipv4(address)
    if embedded is None:
        return False, None
    kind, ipv4 = embedded
    problem = _address_problem(ipv4, allowed)
    if problem is not None:
        return True, f"{kind} embedding {ipv4}, {problem}"
    # Mapped and NAT64 addresses reach exactly the embedded IPv4 host, which passed;
    # ipaddress's verdict on their prefix (reserved) says nothing about that host.
    if kind in (_MAPPED, _NAT64_KIND):
        return True, None
    return False, None


def _embedded_ipv4(address: IPv6Address) -> tuple[str, IPv4Address] | None:
    """The IPv4 address an IPv6 transition form carries, with a phrase naming the form.

    Teredo (2001::/32) also embeds IPv4 but is is_private as a whole, so it is refused anyway.
    """
    if address.ipv4_mapped is not None:
        return _MAPPED, address.ipv4_mapped
    low32 = IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _NAT64:
        return _NAT64_KIND, low32
    if address.sixtofour is not None:
        return "a 6to4 address", address.sixtofour
    if address in _IPV4_COMPATIBLE and int(address) > 1:  # :: and ::1 are not compatible forms
        return "an IPv4-compatible address", low32
    return None
