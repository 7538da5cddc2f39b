"""NAT behaviour vocabulary shared by the probe, the lab's ground truth and punching.

Values are exactly the strings of the probe's ``--json`` schema. Names follow
RFC 4787 (UDP, sections 4.1 mapping, 5 filtering, 4.1.3 port preservation /
allocation, 6 hairpinning) and RFC 5382 (TCP, sections 4 and 5). "Cone" and
"symmetric" appear only as display labels (:func:`classic_label`).
"""

from __future__ import annotations

from enum import Enum


class Mapping(str, Enum):
    """RFC 4787 section 4.1 / RFC 5382 section 4.1 mapping behaviour."""

    NO_NAT = "no-nat"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class Filtering(str, Enum):
    """RFC 4787 section 5 / RFC 5382 section 4.3 filtering behaviour."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class PortAllocation(str, Enum):
    """Port assignment across fresh mappings (RFC 4787 section 4.2.1, RFC 6888)."""

    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


class UnsolicitedSyn(str, Enum):
    """What a NAT does with an unsolicited inbound TCP SYN (RFC 5382 section 7.1)."""

    PASS = "pass"
    DROP = "drop"
    RST = "rst"
    ICMP = "icmp"


def classic_label(mapping: Mapping | None, filtering: Filtering | None) -> str:
    """The familiar RFC 3489-era label, for display only."""
    if mapping is None:
        return "unknown"
    if mapping is Mapping.NO_NAT:
        return "open internet" if filtering in (None, Filtering.ENDPOINT_INDEPENDENT) \
            else "no NAT, firewalled"
    if mapping is not Mapping.ENDPOINT_INDEPENDENT:
        return "symmetric"
    return {
        Filtering.ENDPOINT_INDEPENDENT: "full cone",
        Filtering.ADDRESS_DEPENDENT: "restricted cone",
        Filtering.ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone",
        None: "cone (filtering unknown)",
    }[filtering]
