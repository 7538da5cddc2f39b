"""Pure STUN responder: RFC 5780 section 6.1 Table 1, RESPONSE-PORT, PADDING, classic RFC 3489,
IPv6, 420/400 errors, and drop-and-count of everything that is not a well-formed request."""

from __future__ import annotations

import itertools
import random
import struct

import pytest

from stunturn_diag.sansio.stun import (
    AttrType,
    ChangeRequest,
    ErrorCode,
    MessageClass,
    Method,
    StunMessage,
    binding_request,
    decode,
    encode,
)
from stunturn_server.config import ServerConfig
from stunturn_server.sansio.stun_responder import (
    MAX_PADDING,
    MAX_REQUEST_BYTES,
    ROLES,
    StunEndpoint,
    StunResponder,
)
from stunturn_diag.stun_requests import fresh_binding_request

A1, A2, P1, P2 = "192.0.2.1", "192.0.2.2", 3478, 3479
CLIENT = ("198.51.100.7", 40000)
CLASSIC_TID = bytes(range(0x40, 0x50))
ADDR = {"primary": (A1, P1), "alt-port": (A1, P2), "alt-ip": (A2, P1), "alt-both": (A2, P2)}
OPPOSITE = {"primary": "alt-both", "alt-port": "alt-ip", "alt-ip": "alt-port", "alt-both": "primary"}


def four() -> StunResponder:
    config = ServerConfig(stun_host=A1, alt_ip=A2, stun_port=P1, alt_port=P2)
    return StunResponder(config.stun_endpoints())


def one() -> StunResponder:
    return StunResponder(ServerConfig(stun_host=A1, stun_port=P1).stun_endpoints())


def raw(msg: StunMessage, **kw) -> bytes:
    return encode(msg, **kw)


def only_reply(outcome):
    assert len(outcome.replies) == 1, outcome
    reply = outcome.replies[0]
    return reply, decode(reply.data)


# -- RFC 5780 section 6.1, Table 1 ---------------------------------------------------

def expected_sender(received: str, change_ip: bool, change_port: bool) -> str:
    ip, port = ADDR[received]
    if change_ip:
        ip = A2 if ip == A1 else A1
    if change_port:
        port = P2 if port == P1 else P1
    return next(role for role, addr in ADDR.items() if addr == (ip, port))


@pytest.mark.parametrize("received", ROLES)
@pytest.mark.parametrize("change_ip,change_port", list(itertools.product([False, True], repeat=2)))
def test_change_request_table_1(received, change_ip, change_port):
    responder = four()
    request = fresh_binding_request(change_ip=change_ip, change_port=change_port)
    if not (change_ip or change_port):  # an explicit all-zero CHANGE-REQUEST: no change
        request.add(AttrType.CHANGE_REQUEST, ChangeRequest(False, False))
    outcome = responder.handle(raw(request), CLIENT, received, "udp")
    reply, response = only_reply(outcome)
    sender = expected_sender(received, change_ip, change_port)
    assert outcome.event == "responses"
    assert reply.local.role == sender and (reply.local.ip, reply.local.port) == ADDR[sender]
    assert reply.destination == CLIENT
    assert response.msg_class == MessageClass.SUCCESS
    assert response.transaction_id == request.transaction_id
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.RESPONSE_ORIGIN) == ADDR[sender]
    # OTHER-ADDRESS is Ca:Cp whatever the flags (Table 1)
    assert response.get(AttrType.OTHER_ADDRESS) == ADDR[OPPOSITE[received]]
    assert response.get(AttrType.SOFTWARE)


def test_response_attribute_order_and_no_fingerprint_unless_asked():
    response = decode(only_reply(four().handle(raw(fresh_binding_request()), CLIENT, "primary"))[0].data)
    types = [t for t, _ in response.attributes]
    assert types == [AttrType.XOR_MAPPED_ADDRESS, AttrType.MAPPED_ADDRESS, AttrType.RESPONSE_ORIGIN,
                     AttrType.OTHER_ADDRESS, AttrType.SOFTWARE]


def test_fingerprint_mirrored_when_request_has_one():
    reply, response = only_reply(four().handle(raw(fresh_binding_request(), fingerprint=True), CLIENT,
                                               "primary"))
    assert response.attributes[-1][0] == AttrType.FINGERPRINT  # decode() verified it
    error, _ = only_reply(four().handle(
        raw(fresh_binding_request().add(0x7ABC, b"x"), fingerprint=True), CLIENT, "primary"))
    assert decode(error.data).attributes[-1][0] == AttrType.FINGERPRINT


def test_software_can_be_disabled():
    responder = StunResponder(four().endpoints, software=None)
    _, response = only_reply(responder.handle(raw(fresh_binding_request()), CLIENT, "primary"))
    assert response.get(AttrType.SOFTWARE) is None


# -- without an alternate address (RFC 5780 sections 6, 6.1) --------------------------

def test_single_endpoint_answers_without_other_address():
    reply, response = only_reply(one().handle(raw(fresh_binding_request()), CLIENT, "primary"))
    assert reply.local.role == "primary"
    assert response.get(AttrType.OTHER_ADDRESS) is None
    assert response.get(AttrType.RESPONSE_ORIGIN) == (A1, P1)
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT


@pytest.mark.parametrize("flags", [(True, False), (False, True), (True, True), (False, False)])
def test_single_endpoint_refuses_change_request_with_420(flags):
    responder = one()
    request = fresh_binding_request()
    request.add(AttrType.CHANGE_REQUEST, ChangeRequest(*flags))
    outcome = responder.handle(raw(request), CLIENT, "primary")
    reply, response = only_reply(outcome)
    assert outcome.event == "errors_sent" and responder.stats["errors_sent"] == 1
    assert response.msg_class == MessageClass.ERROR
    assert response.error.code == 420
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == (AttrType.CHANGE_REQUEST,)
    assert reply.local.role == "primary" and reply.destination == CLIENT


def test_single_endpoint_classic_zero_change_request_is_answered():
    request = StunMessage(Method.BINDING, MessageClass.REQUEST, CLASSIC_TID,
                          [(AttrType.CHANGE_REQUEST, ChangeRequest(False, False))])
    _, response = only_reply(one().handle(raw(request), CLIENT, "primary"))
    assert response.msg_class == MessageClass.SUCCESS
    assert response.get(AttrType.CHANGED_ADDRESS) is None


@pytest.mark.parametrize("flags", [(True, False), (False, True), (True, True)])
def test_single_endpoint_classic_change_gets_no_answer(flags):
    """RFC 3489 has no error for this; silence reads as "filtered" (section 10.1)."""
    responder = one()
    request = StunMessage(Method.BINDING, MessageClass.REQUEST, CLASSIC_TID,
                          [(AttrType.CHANGE_REQUEST, ChangeRequest(*flags))])
    assert responder.handle(raw(request), CLIENT, "primary").replies == ()
    assert responder.stats["dropped_change_unavailable"] == 1
    _, response = only_reply(responder.handle(raw(request), CLIENT, "primary", "tcp"))
    assert response.error.code == 420


# -- TCP: the response can only go back on the same connection -----------------------

@pytest.mark.parametrize("flags", [(True, False), (False, True), (True, True)])
def test_tcp_change_request_gets_420(flags):
    outcome = four().handle(raw(fresh_binding_request(change_ip=flags[0], change_port=flags[1])),
                            CLIENT, "alt-port", "tcp")
    reply, response = only_reply(outcome)
    assert response.error.code == 420
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == (AttrType.CHANGE_REQUEST,)
    assert reply.local.role == "alt-port"


def test_tcp_plain_and_zero_change_request_answered_from_receiving_endpoint():
    for request in (fresh_binding_request(),
                    fresh_binding_request().add(AttrType.CHANGE_REQUEST, ChangeRequest(False, False))):
        reply, response = only_reply(four().handle(raw(request), CLIENT, "alt-ip", "tcp"))
        assert reply.local.role == "alt-ip"
        assert response.get(AttrType.RESPONSE_ORIGIN) == (A2, P1)
        assert response.get(AttrType.OTHER_ADDRESS) == (A1, P2)


def test_tcp_response_port_gets_420():
    reply, response = only_reply(four().handle(raw(fresh_binding_request(response_port=5000)), CLIENT,
                                               "primary", "tcp"))
    assert response.error.code == 420
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == (AttrType.RESPONSE_PORT,)


# -- RESPONSE-PORT and PADDING (RFC 5780 sections 6.1, 7.5, 7.6) ----------------------

def test_response_port_sends_to_source_ip_at_that_port():
    reply, response = only_reply(four().handle(
        raw(fresh_binding_request(response_port=41000, change_port=True)), CLIENT, "primary"))
    assert reply.destination == (CLIENT[0], 41000)
    assert reply.local.role == "alt-port"
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == CLIENT  # still the request's source


def test_response_port_zero_is_bad_request():
    reply, response = only_reply(four().handle(raw(fresh_binding_request(response_port=0)), CLIENT,
                                               "primary"))
    assert response.error.code == 400 and reply.destination == CLIENT


def test_response_port_with_padding_is_400_to_the_source():
    request = fresh_binding_request(response_port=41000, padding=512)
    reply, response = only_reply(four().handle(raw(request), CLIENT, "primary"))
    assert response.error == ErrorCode(400, "Bad Request")
    assert reply.destination == CLIENT and reply.local.role == "primary"


@pytest.mark.parametrize("size", [4, 100, 576, 1500, 4000, MAX_REQUEST_BYTES - 64])
def test_padding_is_returned_and_never_amplifies(size):
    request = raw(fresh_binding_request(padding=size))
    plain = len(only_reply(four().handle(raw(fresh_binding_request()), CLIENT, "primary"))[0].data)
    reply, response = only_reply(four().handle(request, CLIENT, "primary"))
    padding = response.get(AttrType.PADDING)
    assert padding is not None  # "PADDING MUST be included"
    assert len(padding) % 4 == 0 and len(padding) <= MAX_PADDING
    assert len(reply.data) <= max(len(request), plain + 4)
    assert len(reply.data) <= plain + 4 + MAX_PADDING


def test_padding_with_fingerprint_keeps_fingerprint_last():
    request = raw(fresh_binding_request(padding=1500), fingerprint=True)
    reply, response = only_reply(four().handle(request, CLIENT, "primary"))
    assert response.attributes[-1][0] == AttrType.FINGERPRINT
    assert len(reply.data) <= len(request)


# -- classic RFC 3489 clients ---------------------------------------------------------

@pytest.mark.parametrize("flags,sender", [((False, False), "primary"), ((True, False), "alt-ip"),
                                          ((False, True), "alt-port"), ((True, True), "alt-both")])
def test_classic_request_gets_classic_attributes(flags, sender):
    request = StunMessage(Method.BINDING, MessageClass.REQUEST, CLASSIC_TID,
                          [(AttrType.CHANGE_REQUEST, ChangeRequest(*flags))])
    responder = four()
    reply, response = only_reply(responder.handle(raw(request), CLIENT, "primary"))
    assert response.classic and response.transaction_id == CLASSIC_TID
    assert reply.data[4:20] == CLASSIC_TID  # no magic cookie
    assert [t for t, _ in response.attributes] == [AttrType.MAPPED_ADDRESS, AttrType.SOURCE_ADDRESS,
                                                   AttrType.CHANGED_ADDRESS]
    assert response.get(AttrType.MAPPED_ADDRESS) == CLIENT
    assert response.get(AttrType.SOURCE_ADDRESS) == ADDR[sender]
    assert response.get(AttrType.CHANGED_ADDRESS) == (A2, P2)
    assert reply.local.role == sender
    assert responder.stats["classic_requests"] == 1


def test_classic_response_address_is_refused():
    request = StunMessage(Method.BINDING, MessageClass.REQUEST, CLASSIC_TID,
                          [(AttrType.RESPONSE_ADDRESS, ("203.0.113.9", 80))])
    reply, response = only_reply(four().handle(raw(request), CLIENT, "primary"))
    assert response.classic and response.error.code == 420
    # RFC 3489 section 11.2.10: an odd list repeats one type to fill 4 bytes
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == (AttrType.RESPONSE_ADDRESS,) * 2
    assert reply.destination == CLIENT  # never the address the request named


# -- IPv6 ------------------------------------------------------------------------------

def test_ipv6_source_and_endpoints():
    config = ServerConfig(stun_host="2001:db8::1", alt_ip="2001:db8::2", stun_port=P1, alt_port=P2)
    responder = StunResponder(config.stun_endpoints())
    reply, response = only_reply(responder.handle(raw(fresh_binding_request(change_ip=True)),
                                                  ("::1", 5555), "primary"))
    assert response.get(AttrType.XOR_MAPPED_ADDRESS) == ("::1", 5555)
    assert response.get(AttrType.MAPPED_ADDRESS) == ("::1", 5555)
    assert response.get(AttrType.RESPONSE_ORIGIN) == ("2001:db8::2", P1)
    assert response.get(AttrType.OTHER_ADDRESS) == ("2001:db8::2", P2)
    assert reply.destination == ("::1", 5555)


def test_ipv6_loopback_single_endpoint():
    responder = StunResponder([StunEndpoint("::1", P1, "primary")])
    _, response = only_reply(responder.handle(raw(fresh_binding_request()), ("::1", 6000), "primary"))
    assert response.mapped_address == ("::1", 6000)
    assert response.response_origin == ("::1", P1)


def test_given_local_endpoint_sets_response_origin():
    """A service bound to 0.0.0.0 passes the real destination address of each request."""
    responder = StunResponder([StunEndpoint("0.0.0.0", P1, "primary")])
    reply, response = only_reply(responder.handle(raw(fresh_binding_request()), CLIENT,
                                                  StunEndpoint("203.0.113.5", P1, "primary")))
    assert response.response_origin == ("203.0.113.5", P1)
    assert reply.local == StunEndpoint("203.0.113.5", P1, "primary")


def test_ipv4_mapped_source_is_reported_as_ipv4():
    _, response = only_reply(four().handle(raw(fresh_binding_request()), ("::ffff:198.51.100.7", 40000),
                                           "primary"))
    assert response.mapped_address == CLIENT


# -- unknown attributes, other methods -------------------------------------------------

def test_unknown_comprehension_required_attributes_get_420():
    request = fresh_binding_request().add(0x7ABC, b"abc").add(0x0031, b"").add(0x7ABC, b"again")
    responder = four()
    reply, response = only_reply(responder.handle(raw(request), CLIENT, "primary"))
    assert response.error == ErrorCode(420, "Unknown Attribute")
    assert response.get(AttrType.UNKNOWN_ATTRIBUTES) == (0x7ABC, 0x0031)
    assert reply.local.role == "primary" and reply.destination == CLIENT
    assert responder.stats["requests"] == 1 and responder.stats["errors_sent"] == 1


def test_turn_attribute_in_binding_request_gets_420():
    request = fresh_binding_request().add(AttrType.XOR_PEER_ADDRESS, ("192.0.2.99", 9))
    _, response = only_reply(four().handle(raw(request), CLIENT, "primary"))
    assert response.error.code == 420


def test_unknown_comprehension_optional_attributes_are_ignored():
    request = fresh_binding_request().add(0xC057, b"\x00\x01\x00\x00").add(AttrType.USERNAME, "someone")
    _, response = only_reply(four().handle(raw(request), CLIENT, "primary"))
    assert response.msg_class == MessageClass.SUCCESS


def test_unknown_attribute_list_is_bounded():
    request = fresh_binding_request()
    for kind in range(0x7000, 0x7040):
        request.add(kind, b"")
    reply, response = only_reply(four().handle(raw(request), CLIENT, "primary"))
    assert 0 < len(response.get(AttrType.UNKNOWN_ATTRIBUTES)) <= 16
    assert len(reply.data) < 200


def test_other_method_request_gets_400():
    request = StunMessage(Method.ALLOCATE, MessageClass.REQUEST, bytes(12))
    responder = four()
    reply, response = only_reply(responder.handle(raw(request), CLIENT, "primary"))
    assert response.method == Method.ALLOCATE and response.msg_class == MessageClass.ERROR
    assert response.error.code == 400


# -- drop and count --------------------------------------------------------------------

def _valid() -> bytes:
    return raw(binding_request(bytes(range(12))))


TID = bytes(range(12))
BAD_INPUT = {
    "empty": (b"", "dropped_non_stun"),
    "http": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "dropped_non_stun"),
    "tls": (b"\x16\x03\x01" + bytes(40), "dropped_malformed"),  # top bits 0, not STUN
    "19-bytes": (bytes(19), "dropped_non_stun"),
    "short-header": (_valid()[:-1], "dropped_non_stun"),
    "length-mismatch": (_valid() + b"\0\0\0\0", "dropped_malformed"),
    "attribute-past-end": (struct.pack("!HH", 1, 8) + _valid()[4:20]
                           + struct.pack("!HH", 0x8022, 40) + b"abcd", "dropped_malformed"),
    "bad-fingerprint": (raw(binding_request(TID), fingerprint=True)[:-1] + b"\xff",
                        "dropped_malformed"),
    "indication": (raw(StunMessage(Method.BINDING, MessageClass.INDICATION, TID)),
                   "dropped_not_request"),
    "success": (raw(StunMessage(Method.BINDING, MessageClass.SUCCESS, TID)),
                "dropped_not_request"),
    "error": (raw(StunMessage(Method.BINDING, MessageClass.ERROR, TID,
                              [(AttrType.ERROR_CODE, ErrorCode(400, "x"))])), "dropped_not_request"),
    "oversize": (raw(binding_request(TID, padding=MAX_REQUEST_BYTES)), "dropped_oversize"),
}


@pytest.mark.parametrize("data,counter", list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_is_dropped_and_counted(data, counter):
    responder = four()
    outcome = responder.handle(data, CLIENT, "primary")
    assert outcome.replies == () and outcome.event == counter
    assert responder.stats[counter] == 1
    assert responder.stats["responses"] == responder.stats["errors_sent"] == 0


@pytest.mark.parametrize("source", [("198.51.100.7", 0), ("not-an-ip", 5), ("::1", 70000)])
def test_unanswerable_source_is_dropped(source):
    responder = four()
    assert responder.handle(_valid(), source, "primary").replies == ()
    assert responder.stats["dropped_bad_source"] == 1


def test_unknown_role_and_transport_are_programming_errors():
    with pytest.raises(ValueError):
        one().handle(_valid(), CLIENT, "alt-ip")
    with pytest.raises(ValueError):
        one().handle(_valid(), CLIENT, "primary", "sctp")
    with pytest.raises(ValueError):
        StunResponder([StunEndpoint(A1, P1, "alt-port")])


def test_random_mutations_never_raise_and_never_amplify():
    rng = random.Random(5780)
    responder = four()
    seeds = [_valid(), raw(fresh_binding_request(change_ip=True, response_port=9), fingerprint=True),
             raw(StunMessage(Method.BINDING, MessageClass.REQUEST, CLASSIC_TID,
                             [(AttrType.CHANGE_REQUEST, ChangeRequest(True, True))])),
             raw(fresh_binding_request(padding=64))]
    total = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            if op == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif op == 1:
                data = data[:rng.randrange(len(data) + 1)]
            else:
                data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        outcome = responder.handle(bytes(data), CLIENT, rng.choice(ROLES),
                                   rng.choice(["udp", "tcp"]))
        total += 1
        for reply in outcome.replies:
            assert len(reply.data) <= max(len(data), 200)
            assert reply.destination[0] == CLIENT[0]
    counted = sum(v for k, v in responder.stats.items()
                  if k in ("responses", "errors_sent") or k.startswith("dropped_"))
    assert counted == total
