"""PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP IGD codecs against byte layouts built
by hand from the RFC figures (not from the encoder)."""

from __future__ import annotations

import pytest

from stunturn_diag.errors import PortMapDecodeError, PortMapEncodeError
from stunturn_diag.sansio.portmap import natpmp_codec as natpmp
from stunturn_diag.sansio.portmap import pcp_codec as pcp
from stunturn_diag.sansio.portmap import upnp_codec as upnp
from stunturn_diag.portmap.client_runner import parse_proc_route, send_times
from stunturn_diag.portmap.discover import assess

NONCE = bytes(range(1, 13))
V4MAPPED = lambda a, b, c, d: bytes(10) + b"\xff\xff" + bytes((a, b, c, d))  # noqa: E731


# -- PCP -----------------------------------------------------------------------------

def test_pcp_map_request_layout_rfc6887_7_1_and_11_1():
    req = pcp.map_request(NONCE, "192.168.1.10", pcp.PROTOCOL_UDP, 4500, lifetime=3600,
                          suggested_port=4501)
    wire = pcp.encode_request(req)
    want = (bytes((2, 1, 0, 0)) + (3600).to_bytes(4, "big") + V4MAPPED(192, 168, 1, 10)
            + NONCE + bytes((17, 0, 0, 0)) + (4500).to_bytes(2, "big")
            + (4501).to_bytes(2, "big") + V4MAPPED(0, 0, 0, 0))
    assert wire == want
    assert len(wire) == 60 and len(wire) % 4 == 0
    assert pcp.decode_request(wire) == req


def test_pcp_map_response_decodes_assigned_address_and_epoch():
    wire = (bytes((2, 0x81, 0, 0)) + (7200).to_bytes(4, "big") + (1234).to_bytes(4, "big")
            + bytes(12) + NONCE + bytes((6, 0, 0, 0)) + (22).to_bytes(2, "big")
            + (40022).to_bytes(2, "big") + V4MAPPED(203, 0, 113, 2))
    resp = pcp.decode_response(wire)
    assert resp.ok and resp.opcode is pcp.Opcode.MAP and resp.result is pcp.ResultCode.SUCCESS
    assert (resp.lifetime, resp.epoch) == (7200, 1234)
    assert resp.map == pcp.MapData(NONCE, 6, 22, 40022, "203.0.113.2")
    assert pcp.encode_response(resp) == wire


@pytest.mark.parametrize("code,name", [(2, "NOT_AUTHORIZED"), (8, "NO_RESOURCES"),
                                       (11, "CANNOT_PROVIDE_EXTERNAL"), (12, "ADDRESS_MISMATCH"),
                                       (99, "RESULT_99")])
def test_pcp_error_result_codes(code, name):
    wire = bytes((2, 0x81, 0, code)) + (30).to_bytes(4, "big") + bytes(16) + NONCE + bytes(24)
    resp = pcp.decode_response(wire)
    assert not resp.ok and resp.result_name == name and resp.lifetime == 30


def test_pcp_announce_is_a_bare_header():
    wire = pcp.encode_request(pcp.announce_request("10.0.0.2"))
    assert wire == bytes((2, 0, 0, 0, 0, 0, 0, 0)) + V4MAPPED(10, 0, 0, 2)
    resp = pcp.decode_response(bytes((2, 0x80, 0, 0)) + bytes(4) + (5).to_bytes(4, "big") + bytes(12))
    assert resp.ok and resp.opcode is pcp.Opcode.ANNOUNCE and resp.epoch == 5 and resp.map is None


def test_pcp_ipv6_and_mapped_addresses():
    assert pcp.mapped_address("2001:db8::1") == bytes.fromhex("20010db8000000000000000000000001")
    assert pcp.unmapped_address(V4MAPPED(198, 51, 100, 7)) == "198.51.100.7"
    assert pcp.unmapped_address(bytes.fromhex("20010db8000000000000000000000001")) == "2001:db8::1"


def test_pcp_options_padded_to_four_bytes():
    opt = pcp.Option(pcp.OptionCode.THIRD_PARTY, V4MAPPED(192, 168, 1, 20))
    req = pcp.Request(pcp.Opcode.MAP, "192.168.1.10", 60,
                      pcp.MapData(NONCE, 17, 1, 0, "0.0.0.0"),
                      (opt, pcp.Option(pcp.OptionCode.PREFER_FAILURE), pcp.Option(200, b"x")))
    wire = pcp.encode_request(req)
    assert wire[60:64] == bytes((1, 0, 0, 16))
    assert wire[80:84] == bytes((2, 0, 0, 0))
    assert wire[84:] == bytes((200, 0, 0, 1)) + b"x\x00\x00\x00"
    assert pcp.decode_request(wire).options == req.options
    assert not pcp.Option(200).mandatory and pcp.Option(1).mandatory


def test_natpmp_server_answering_pcp_is_unsupported_version():
    resp = pcp.decode_response(bytes((0, 0x81, 0, 1)) + (77).to_bytes(4, "big"))
    assert resp.version == 0 and resp.result == pcp.ResultCode.UNSUPP_VERSION and resp.epoch == 77


@pytest.mark.parametrize("wire,why", [
    (bytes(3), "at least"),
    (bytes((2, 0x81)) + bytes(20), "at least 24"),
    (bytes((2, 0x81)) + bytes(27), "multiple of 4"),
    (bytes((2, 0x81)) + bytes(1102), "over"),
    (bytes((2, 0x01)) + bytes(58), "not a response"),
    (bytes((3, 0x81)) + bytes(58), "version"),
    (bytes((2, 0x81, 0, 0)) + bytes(20), "without its opcode data"),
    (bytes((2, 0x80, 0, 0)) + bytes(20) + bytes((1, 0, 0, 9)), "claims 9"),
])
def test_pcp_malformed_responses_raise_typed_errors(wire, why):
    with pytest.raises(PortMapDecodeError, match=why):
        pcp.decode_response(wire)


def test_pcp_matches_needs_same_nonce_and_port():
    req = pcp.map_request(NONCE, "192.168.1.10", 17, 4500)
    good = pcp.Response(pcp.Opcode.MAP, 0, 60, 1, pcp.MapData(NONCE, 17, 4500, 1, "203.0.113.2"))
    assert pcp.matches(req, good)
    assert not pcp.matches(req, pcp.Response(pcp.Opcode.MAP, 0, 60, 1,
                                             pcp.MapData(bytes(12), 17, 4500, 1, "203.0.113.2")))
    assert not pcp.matches(req, pcp.Response(pcp.Opcode.ANNOUNCE, 0, 0, 1))


def test_pcp_encode_rejects_bad_fields():
    with pytest.raises(PortMapEncodeError):
        pcp.encode_request(pcp.map_request(b"short", "192.168.1.10", 17, 1))
    with pytest.raises(PortMapEncodeError):
        pcp.encode_request(pcp.map_request(NONCE, "192.168.1.10", 17, 70000))
    with pytest.raises(PortMapEncodeError):
        pcp.encode_request(pcp.Request(pcp.Opcode.MAP, "192.168.1.10"))


# -- NAT-PMP -------------------------------------------------------------------------

def test_natpmp_external_address_request_and_response_rfc6886_3_2():
    assert natpmp.encode_request(natpmp.ExternalAddressRequest()) == b"\x00\x00"
    resp = natpmp.decode_response(bytes((0, 128, 0, 0)) + (3600).to_bytes(4, "big")
                                  + bytes((203, 0, 113, 2)))
    assert resp == natpmp.ExternalAddressResponse(natpmp.ResultCode.SUCCESS, 3600, "203.0.113.2")
    assert natpmp.encode_response(resp) == bytes((0, 128, 0, 0, 0, 0, 14, 16, 203, 0, 113, 2))


def test_natpmp_mapping_request_and_response_rfc6886_3_3():
    req = natpmp.MappingRequest(natpmp.Opcode.MAP_TCP, 22, 2222, 7200)
    assert natpmp.encode_request(req) == bytes((0, 2, 0, 0, 0, 22, 8, 174, 0, 0, 28, 32))
    assert natpmp.decode_request(natpmp.encode_request(req)) == req
    wire = bytes((0, 130, 0, 0)) + (9).to_bytes(4, "big") + bytes((0, 22, 0x9c, 0x40)) \
        + (3600).to_bytes(4, "big")
    resp = natpmp.decode_response(wire)
    assert resp == natpmp.MappingResponse(natpmp.Opcode.MAP_TCP, 0, 9, 22, 40000, 3600)
    assert natpmp.matches(req, resp)
    assert not natpmp.matches(natpmp.MappingRequest(natpmp.Opcode.MAP_UDP, 22), resp)
    assert natpmp.encode_response(resp) == wire


def test_natpmp_delete_and_errors():
    assert natpmp.encode_request(natpmp.MappingRequest(natpmp.Opcode.MAP_UDP, 5000, 0, 0))[8:] == bytes(4)
    with pytest.raises(PortMapEncodeError, match="6886 section 3.4"):
        natpmp.encode_request(natpmp.MappingRequest(natpmp.Opcode.MAP_UDP, 5000, 5000, 0))
    refused = natpmp.decode_response(bytes((0, 128, 0, 3)) + bytes(8))
    assert refused.result is natpmp.ResultCode.NETWORK_FAILURE and refused.external_ip is None
    short = natpmp.decode_response(bytes((0, 133, 0, 5)) + (1).to_bytes(4, "big"))
    assert isinstance(short, natpmp.ErrorResponse) and short.result is natpmp.ResultCode.UNSUPPORTED_OPCODE
    with pytest.raises(PortMapDecodeError, match="PCP server"):
        natpmp.decode_response(bytes((2, 0x81)) + bytes(58))
    with pytest.raises(PortMapDecodeError, match="only 8 bytes"):
        natpmp.decode_response(bytes((0, 129, 0, 0)) + bytes(4))


def test_natpmp_epoch_detects_gateway_reboot_rfc6886_3_6():
    assert not natpmp.epoch_lost_state(1000, 50.0, 1008, 60.0)
    assert natpmp.epoch_lost_state(1000, 50.0, 3, 60.0)          # rebooted
    assert natpmp.epoch_lost_state(1000, 50.0, 1001, 100.0)      # far too little progress


# -- UPnP IGD ------------------------------------------------------------------------

DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/IPConn</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
<controlURL>/ctl/IPConn2</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>http://198.51.100.66/evil</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"""


def test_ssdp_search_and_answer():
    req = upnp.msearch()
    assert req.startswith(b"M-SEARCH * HTTP/1.1\r\n") and b'MAN: "ssdp:discover"' in req
    assert req.endswith(b"\r\n\r\n")
    ans = upnp.parse_ssdp_answer(b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
                                 b"st: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
                                 b"Location: http://192.168.1.1:5000/rootDesc.xml\r\n\r\n")
    assert ans.location == "http://192.168.1.1:5000/rootDesc.xml"
    with pytest.raises(PortMapDecodeError):
        upnp.parse_ssdp_answer(b"NOTIFY * HTTP/1.1\r\n\r\n")
    with pytest.raises(PortMapDecodeError, match="LOCATION"):
        upnp.parse_ssdp_answer(b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n")


def test_description_prefers_v2_and_ignores_other_hosts():
    found = upnp.parse_description(DESCRIPTION, "http://192.168.1.1:5000/rootDesc.xml")
    assert [s.control_url for s in found] == ["http://192.168.1.1:5000/ctl/IPConn2",
                                              "http://192.168.1.1:5000/ctl/IPConn"]


def test_description_refuses_entity_expansion():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]>'
            b"<root>&b;</root>")
    with pytest.raises(PortMapDecodeError, match="not acceptable XML"):
        upnp.parse_description(bomb, "http://192.168.1.1/")


def test_soap_request_and_answers():
    headers, body = upnp.soap_request(upnp.WAN_SERVICES[1], "AddPortMapping",
                                      upnp.add_port_mapping_args("udp", 4000, "192.168.1.10",
                                                                 4000, 60, "a<b"))
    assert headers["SOAPAction"] == '"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    assert b"<NewProtocol>UDP</NewProtocol>" in body and b"a&lt;b" in body
    ok = upnp.parse_soap_response(200, (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        b'<u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">'
        b"<NewExternalIPAddress>203.0.113.2</NewExternalIPAddress>"
        b"</u:GetExternalIPAddressResponse></s:Body></s:Envelope>"), "GetExternalIPAddress")
    assert ok.ok and ok.values == {"NewExternalIPAddress": "203.0.113.2"}
    fault = upnp.parse_soap_response(500, (
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
        b"<detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode>"
        b"<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail>"
        b"</s:Fault></s:Body></s:Envelope>"), "AddPortMapping")
    assert (fault.ok, fault.error_code, fault.error_description) == (False, 718, "ConflictInMappingEntry")


# -- runner helpers and the assessment ----------------------------------------------

def test_send_schedule_doubles_from_250ms():
    assert send_times(0.25, 4) == [0, 0.25, 0.75, 1.75]


def test_default_gateway_from_proc_net_route():
    text = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
            "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n")
    assert parse_proc_route(text) == "192.168.1.1"
    assert parse_proc_route(text.splitlines()[0] + "\n") is None


def test_assess_usable_only_when_external_equals_stun_mapped():
    found = {"gateway": "192.168.1.1", "pcp": {"answered": True, "external_ip": "203.0.113.2"},
             "nat_pmp": {"answered": True, "external_ip": "203.0.113.2"}, "upnp": {}}
    block = assess(found, "203.0.113.2")
    assert (block["pcp"], block["nat_pmp"], block["upnp"]) == (True, True, False)
    assert block["external_ip"] == "203.0.113.2" and block["usable"] is True
    behind_cgnat = assess(found, "203.0.113.18")
    assert behind_cgnat["usable"] is False and "another NAT layer" in behind_cgnat["notes"][0]
    assert assess(found, None)["usable"] is None
    nothing = assess({"gateway": None}, "203.0.113.2")
    assert nothing["pcp"] is nothing["nat_pmp"] is nothing["upnp"] is nothing["usable"] is False


def test_udp_exchange_stops_when_told_and_sends_once():
    """A set ``stop`` ends the wait for a silent gateway (loopback only)."""
    import socket
    import threading
    import time

    from stunturn_diag.portmap.client_runner import udp_exchange

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
        silent.bind(("127.0.0.1", 0))
        asker.bind(("127.0.0.1", 0))
        stop = threading.Event()
        stop.set()
        got = udp_exchange(asker, silent.getsockname(), b"\x00\x00", natpmp.decode_response,
                           lambda r: True, deadline=time.monotonic() + 120, stop=stop)
        assert got is None
        silent.setblocking(False)
        assert silent.recv(16) == b"\x00\x00"
        with pytest.raises(BlockingIOError):
            silent.recv(16)


def test_udp_exchange_takes_the_first_matching_answer_from_the_gateway_only():
    import socket
    import threading
    import time

    from stunturn_diag.portmap.client_runner import udp_exchange

    answer = natpmp.encode_response(natpmp.ExternalAddressResponse(0, 5, "203.0.113.2"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gw, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as asker:
        for s in (gw, other, asker):
            s.bind(("127.0.0.1", 0))

        def gateway():
            data, src = gw.recvfrom(64)
            other.sendto(answer, src)                 # a stranger's answer: ignored
            gw.sendto(b"\x00", src)                   # malformed: ignored
            gw.sendto(answer, src)
        thread = threading.Thread(target=gateway, daemon=True)
        thread.start()
        got = udp_exchange(asker, gw.getsockname(), natpmp.encode_request(
            natpmp.ExternalAddressRequest()), natpmp.decode_response, lambda r: True,
            deadline=time.monotonic() + 30)
        thread.join(5)
        assert got == natpmp.ExternalAddressResponse(0, 5, "203.0.113.2")


def test_probe_does_not_ask_the_gateway_for_a_loopback_server():
    from stunturn_diag.probe.api import _no_gateway_on_path

    assert "loopback" in _no_gateway_on_path("http://127.0.0.1:8080", None)
    assert "loopback" in _no_gateway_on_path("localhost:8080", None)
    assert "loopback" in _no_gateway_on_path(None, "[::1]:3478")
    assert _no_gateway_on_path("http://198.51.100.10:8080", None) is None
    assert _no_gateway_on_path(None, "not a host:port:x") is None     # _run_probe reports it


def test_probe_json_has_port_mapping_key_null_when_skipped():
    from stunturn_diag.sansio.probe.assemble import unreachable

    doc = unreachable("no route", {"url": "x"}, 0.0).to_json()
    assert "port_mapping" in doc and doc["port_mapping"] is None
