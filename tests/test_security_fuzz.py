"""Property-based fuzzing (hypothesis), bounded for CI: STUN codec, STUN responder, JSON API.

Each property runs at most ``max_examples`` inputs with a per-example deadline, so the whole
file stays well under a minute.
"""

from __future__ import annotations

import struct

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stunturn_diag.errors import StunDecodeError  # noqa: E402
from stunturn_diag.sansio.stun import (MAGIC_COOKIE, AttrType, MessageClass, Method, StunMessage,  # noqa: E402
                                decode, encode, looks_like_stun)
from stunturn_server.app import create_app  # noqa: E402
from stunturn_server.config import ServerConfig  # noqa: E402
from stunturn_server.sansio.stun_responder import StunEndpoint, StunResponder  # noqa: E402

BOUNDED = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])

ENDPOINTS = [StunEndpoint("192.0.2.1", 3478, "primary"), StunEndpoint("192.0.2.1", 3479, "alt-port"),
             StunEndpoint("192.0.2.2", 3478, "alt-ip"), StunEndpoint("192.0.2.2", 3479, "alt-both")]


def stun_like() -> st.SearchStrategy[bytes]:
    """Bytes that pass the cheap header checks often, so the attribute parser is exercised."""
    attrs = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6)

    def build(kind, tid, attributes, cookie):
        body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4) for t, v in attributes)
        return struct.pack("!HHI", kind, len(body), cookie) + tid + body
    return st.builds(build, st.sampled_from([0x0001, 0x0101, 0x0111, 0x0011, 0x0002]),
                     st.binary(min_size=12, max_size=12), attrs,
                     st.sampled_from([MAGIC_COOKIE, MAGIC_COOKIE, 0x01020304]))


@BOUNDED
@given(st.one_of(st.binary(max_size=200), stun_like()))
def test_decode_raises_only_stun_decode_errors(data):
    try:
        message = decode(data)
    except StunDecodeError:
        return
    assert looks_like_stun(data, classic=True) or looks_like_stun(data)
    assert isinstance(message, StunMessage) and len(message.transaction_id) in (12, 16)


@BOUNDED
@given(st.binary(min_size=12, max_size=12), st.text(max_size=60).filter(lambda s: "\x00" not in s),
       st.integers(1, 65535), st.sampled_from(["192.0.2.9", "2001:db8::9"]))
def test_encode_decode_round_trip(tid, software, port, ip):
    msg = StunMessage(Method.BINDING, MessageClass.SUCCESS, tid,
                      [(AttrType.XOR_MAPPED_ADDRESS, (ip, port)), (AttrType.SOFTWARE, software)])
    try:
        data = encode(msg, fingerprint=True)
    except Exception as exc:  # a value the codec cannot encode must say so with its own error
        assert type(exc).__name__ == "StunEncodeError"
        return
    back = decode(data)
    assert back.transaction_id == tid and back.mapped_address == (ip, port)
    assert back.get(AttrType.SOFTWARE) == software


@BOUNDED
@given(st.one_of(st.binary(max_size=300), stun_like()), st.sampled_from(["udp", "tcp"]),
       st.sampled_from(["primary", "alt-port", "alt-ip", "alt-both"]))
def test_responder_never_raises_and_never_amplifies(data, transport, role):
    responder = StunResponder(ENDPOINTS)
    outcome = responder.handle(data, ("198.51.100.7", 40000), role, transport)
    for reply in outcome.replies:
        assert reply.destination[0] == "198.51.100.7"  # only ever back to the source IP
        # a reply is never much larger than what came in (no reflection amplifier)
        assert len(reply.data) <= max(len(data), 20) + 120, (len(reply.data), len(data))
        if transport == "tcp":
            assert reply.local.role == role


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                      max_size=4),
    max_leaves=12)
bodies = st.one_of(
    st.fixed_dictionaries({"rendezvous": st.one_of(st.text(max_size=40),
                                                   st.binary(min_size=16, max_size=64).map(bytes.hex))},
                          optional={"target_ip": st.text(max_size=40), "protocol": json_values,
                                    "timeout": json_values, "details": json_values}),
    st.dictionaries(st.text(max_size=12), json_values, max_size=5), json_values)


@pytest.fixture(scope="module")
def client():
    app = create_app(ServerConfig(http_port=0, wait_timeout=0.01, failure_burst=10_000_000,
                                  target_failure_burst=10_000_000))
    return app.test_client()


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.sampled_from(["/v1/initiate", "/v1/checkin", "/v1/probe/tcp-connect", "/v1/probe/tcp-simopen"]),
       bodies, st.booleans())
def test_json_api_answers_every_body_with_a_json_error_or_success(client, path, body, raw):
    import json

    data = json.dumps(body).encode() if not raw else json.dumps(body).encode()[::-1]
    r = client.post(path, data=data, content_type="application/json")
    assert r.status_code != 500, r.json
    assert r.is_json and ("error" in r.json or r.status_code == 200)
