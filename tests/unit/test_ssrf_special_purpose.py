"""The outbound guard refuses every address of the IANA special-purpose registries, and port 0.

The registries are written out here again, from IANA's pages, independently of the guard's own table:
the test is the check that the table is complete. Each block is tried at its first, last and a middle
address, as a literal URL host and as what a host name resolves to.
"""

import ipaddress

import pytest

from service.notify.ssrf import OutboundGuard, OutboundRefused

# https://www.iana.org/assignments/iana-ipv4-special-registry/ : (block, name, globally reachable)
IANA_IPV4 = [
    ("0.0.0.0/8", '"This network"', False),
    ("0.0.0.0/32", '"This host on this network"', False),
    ("10.0.0.0/8", "Private-Use", False),
    ("100.64.0.0/10", "Shared Address Space", False),
    ("127.0.0.0/8", "Loopback", False),
    ("169.254.0.0/16", "Link Local", False),
    ("172.16.0.0/12", "Private-Use", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", False),
    ("192.0.0.8/32", "IPv4 dummy address", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", False),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", False),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", False),
    ("192.31.196.0/24", "AS112-v4", True),
    ("192.52.193.0/24", "AMT", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", None),
    ("192.88.99.2/32", "6a44-relay anycast address", False),
    ("192.168.0.0/16", "Private-Use", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", True),
    ("198.18.0.0/15", "Benchmarking", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", False),
    ("240.0.0.0/4", "Reserved", False),
    ("255.255.255.255/32", "Limited Broadcast", False),
]
# https://www.iana.org/assignments/iana-ipv6-special-registry/
IANA_IPV6 = [
    ("::1/128", "Loopback Address", False),
    ("::/128", "Unspecified Address", False),
    ("::ffff:0:0/96", "IPv4-mapped Address", False),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", True),
    ("64:ff9b:1::/48", "IPv4-IPv6 Translat.", False),
    ("100::/64", "Discard-Only Address Block", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", False),
    ("2001::/23", "IETF Protocol Assignments", False),
    ("2001::/32", "TEREDO", None),
    ("2001:1::1/128", "Port Control Protocol Anycast", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", True),
    ("2001:2::/48", "Benchmarking", False),
    ("2001:3::/32", "AMT", True),
    ("2001:4:112::/48", "AS112-v6", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", False),
    ("2001:20::/28", "ORCHIDv2", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", True),
    ("2001:db8::/32", "Documentation", False),
    ("2002::/16", "6to4", None),
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", True),
    ("3fff::/20", "Documentation", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", False),
    ("fc00::/7", "Unique-Local", False),
    ("fe80::/10", "Link-Local Unicast", False),
]


def _samples(block: str) -> list[str]:
    net = ipaddress.ip_network(block)
    first, last = int(net.network_address), int(net.broadcast_address)
    return sorted({str(ipaddress.ip_address(n)) for n in (first, (first + last) // 2, last)})


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


CASES = [
    pytest.param(address, id=f"{block} {name} {address}")
    for block, name, _reachable in IANA_IPV4 + IANA_IPV6
    for address in _samples(block)
]


@pytest.mark.parametrize("address", CASES)
def test_every_special_purpose_address_is_refused_as_a_literal_and_as_a_resolved_name(address):
    with pytest.raises(OutboundRefused, match="address, which is not allowed"):
        OutboundGuard().check(f"http://{_host(address)}/hook")
    with pytest.raises(OutboundRefused, match=rf"host hooks\.example\.org resolves to {address}, "):
        OutboundGuard(resolver=lambda host, port: [address]).check("https://hooks.example.org/hook")


@pytest.mark.parametrize(
    "url",
    ["http://8.8.8.8:0/", "https://8.8.8.8:00/hook", "http://[2606:4700:4700::1111]:0/", "http://hooks.example.org:0/"],
)
def test_port_zero_is_refused(url):
    guard = OutboundGuard(resolver=lambda host, port: ["93.184.215.14"])
    with pytest.raises(OutboundRefused, match="port 0"):
        guard.check(url)


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://8.8.8.8/", 80),
        ("https://8.8.8.8/", 443),
        ("http://8.8.8.8:8080/", 8080),
        ("https://[2606:4700:4700::1111]/", 443),
        ("https://hooks.example.org:65535/", 65535),
    ],
)
def test_public_addresses_and_real_ports_still_pass(url, port):
    target = OutboundGuard(resolver=lambda host, port: ["93.184.215.14"]).check(url)
    assert target.port == port


def test_the_allow_list_still_admits_a_special_purpose_network_it_names():
    assert OutboundGuard(("192.0.0.0/24",)).check("http://192.0.0.8/").address == "192.0.0.8"
