"""Sans-IO pieces of a UPnP Internet Gateway Device client.

- SSDP discovery (UPnP Device Architecture 1.1 section 1.3.2): an ``M-SEARCH`` request
  for ``urn:schemas-upnp-org:device:InternetGatewayDevice:1`` / ``:2``, sent to
  239.255.255.250:1900; the unicast ``HTTP/1.1 200 OK`` answers carry ``LOCATION``
  (the device description URL), ``ST`` and ``USN``.
- The device description (UDA section 2.3): the ``WANIPConnection:1/2`` (or
  ``WANPPPConnection:1``) service and its ``controlURL``.
- SOAP control (UDA section 3.2; WANIPConnection:2 service spec): the request envelope
  for an action and its arguments, and the decoded answer (out-arguments, or the
  ``UPnPError`` code and description of a fault).

Gateway XML is untrusted input: it is parsed with ``defusedxml`` (no entity expansion,
no external entities). Pure: no sockets; the runner does HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from stunturn_diag.errors import PortMapDecodeError

SSDP_ADDRESS = ("239.255.255.250", 1900)
IGD_DEVICE_TYPES = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2",
                    "urn:schemas-upnp-org:device:InternetGatewayDevice:1")
#: connection services in order of preference (v2 has AddAnyPortMapping)
WAN_SERVICES = ("urn:schemas-upnp-org:service:WANIPConnection:2",
                "urn:schemas-upnp-org:service:WANIPConnection:1",
                "urn:schemas-upnp-org:service:WANPPPConnection:1")
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"
CONTROL_NS = "urn:schemas-upnp-org:control-1-0"
MAX_XML = 64 * 1024


def msearch(search_target: str = IGD_DEVICE_TYPES[1], mx: int = 1) -> bytes:
    """An SSDP M-SEARCH request (UDA 1.1 section 1.3.2). ``mx``: seconds a device may
    wait before answering (1..5); miniupnpd answers at once."""
    return ("M-SEARCH * HTTP/1.1\r\n"
            f"HOST: {SSDP_ADDRESS[0]}:{SSDP_ADDRESS[1]}\r\n"
            'MAN: "ssdp:discover"\r\n'
            f"MX: {max(1, min(5, mx))}\r\n"
            f"ST: {search_target}\r\n\r\n").encode("ascii")


@dataclass(frozen=True)
class SsdpAnswer:
    location: str
    search_target: str
    usn: str = ""
    server: str = ""


def parse_ssdp_answer(data: bytes) -> SsdpAnswer:
    """Parse a unicast M-SEARCH answer: status line ``HTTP/1.1 200 OK`` and headers,
    names case-insensitive. PortMapDecodeError without a 200 status or a LOCATION."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise PortMapDecodeError("SSDP answer is not UTF-8 text") from None
    lines = text.split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].upper().startswith("HTTP/") or status[1] != "200":
        raise PortMapDecodeError(f"not an SSDP search answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    location = headers.get("location", "")
    if urlsplit(location).scheme not in ("http", "https") or not urlsplit(location).hostname:
        raise PortMapDecodeError(f"SSDP answer without a usable LOCATION: {location[:80]!r}")
    return SsdpAnswer(location, headers.get("st", ""), headers.get("usn", ""),
                      headers.get("server", ""))


def _parse_xml(data: bytes, what: str) -> Element:
    if len(data) > MAX_XML:
        raise PortMapDecodeError(f"{what} is {len(data)} bytes, over {MAX_XML}")
    import defusedxml.ElementTree as SafeET     # imported when a gateway answers
    from defusedxml import DefusedXmlException

    try:
        return SafeET.fromstring(data)
    except (SafeET.ParseError, DefusedXmlException) as exc:
        raise PortMapDecodeError(f"{what} is not acceptable XML: {exc}") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child_text(elem: Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


@dataclass(frozen=True)
class WanService:
    service_type: str
    control_url: str


def parse_description(data: bytes, location: str) -> list[WanService]:
    """The WAN connection services of a device description, best first
    (:data:`WAN_SERVICES` order). ``controlURL`` is resolved against ``URLBase`` or
    ``location``; a URL on another host than ``location`` is not followed (a gateway
    that names some other machine is not trusted to)."""
    root = _parse_xml(data, "device description")
    base = location
    for elem in root.iter():
        if _local(elem.tag) == "URLBase" and (elem.text or "").strip():
            base = elem.text.strip()
    found = []
    for elem in root.iter():
        if _local(elem.tag) != "service":
            continue
        stype, control = _child_text(elem, "serviceType"), _child_text(elem, "controlURL")
        if stype in WAN_SERVICES and control:
            url = urljoin(base, control)
            if urlsplit(url).hostname == urlsplit(location).hostname:
                found.append(WanService(stype, url))
    found.sort(key=lambda s: WAN_SERVICES.index(s.service_type))
    return found


def soap_request(service_type: str, action: str, args: dict[str, object] | None = None
                 ) -> tuple[dict[str, str], bytes]:
    """Headers and body of a SOAP action call (UDA section 3.2.1). Argument values are
    escaped as XML text."""
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in (args or {}).items())
    body = ('<?xml version="1.0"?>\r\n'
            f'<s:Envelope xmlns:s="{SOAP_ENV}" s:encodingStyle="{SOAP_ENCODING}">'
            f'<s:Body><u:{action} xmlns:u="{service_type}">{inner}</u:{action}>'
            "</s:Body></s:Envelope>").encode("utf-8")
    headers = {"Content-Type": 'text/xml; charset="utf-8"',
               "SOAPAction": f'"{service_type}#{action}"'}
    return headers, body


@dataclass(frozen=True)
class SoapResult:
    """An action's answer: ``values`` (out-arguments) on success, else the UPnP error
    (e.g. 718 ConflictInMappingEntry, 725 OnlyPermanentLeasesSupported,
    606 Action not authorized; WANIPConnection:2 section 2.5)."""

    ok: bool
    values: dict[str, str] = field(default_factory=dict)
    error_code: int | None = None
    error_description: str = ""


def parse_soap_response(status: int, data: bytes, action: str) -> SoapResult:
    """Decode the HTTP status and body of an action call (UDA section 3.2.2 / 3.2.4)."""
    root = _parse_xml(data, f"{action} answer")
    if status == 200:
        for elem in root.iter():
            if _local(elem.tag) == f"{action}Response":
                return SoapResult(True, {_local(c.tag): (c.text or "").strip() for c in elem})
        raise PortMapDecodeError(f"{action} answer has no {action}Response element")
    for elem in root.iter():
        if _local(elem.tag) == "UPnPError":
            code = _child_text(elem, "errorCode")
            return SoapResult(False, error_code=int(code) if code.isdigit() else None,
                              error_description=_child_text(elem, "errorDescription"))
    return SoapResult(False, error_description=f"HTTP {status} without a UPnPError")


def add_port_mapping_args(protocol: str, external_port: int, internal_client: str,
                          internal_port: int, lease: int, description: str = "stunturn-diag",
                          remote_host: str = "") -> dict[str, object]:
    """In-arguments of AddPortMapping / AddAnyPortMapping (WANIPConnection:2 2.5.16/2.5.18)."""
    return {"NewRemoteHost": remote_host, "NewExternalPort": external_port,
            "NewProtocol": protocol.upper(), "NewInternalPort": internal_port,
            "NewInternalClient": internal_client, "NewEnabled": 1,
            "NewPortMappingDescription": description, "NewLeaseDuration": lease}


def delete_port_mapping_args(protocol: str, external_port: int,
                             remote_host: str = "") -> dict[str, object]:
    """In-arguments of DeletePortMapping (WANIPConnection:2 section 2.5.17)."""
    return {"NewRemoteHost": remote_host, "NewExternalPort": external_port,
            "NewProtocol": protocol.upper()}
