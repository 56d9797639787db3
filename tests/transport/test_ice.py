"""The ICE-lite agent: RFC 5769 vectors, what a browser's checks get back, drops, nomination, consent."""

from __future__ import annotations

import random
from typing import Any

import pytest
from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_sfu.transport.ice import (
    Address,
    CandidateEvicted,
    CandidateValidated,
    IceLiteAgent,
    PairSelected,
    check_stun_auth,
)

# --- RFC 5769 test vectors -------------------------------------------------------------------------

VECTOR_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
VECTOR_TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# Section 2.1: sample request (padding bytes are spaces, 0x20).
SAMPLE_REQUEST = bytes.fromhex(
    "00010058"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e" "20746573" "7420636c" "69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b1" "51263b36"
    "00060009" "6576746a" "3a683676" "59202020"
    "00080014" "9aeaa70c" "bfd8cb56" "781ef2b5" "b2d3f249" "c1b571a2"
    "80280004" "e57a3bcf"
)

# Section 2.2: sample IPv4 response.
SAMPLE_RESPONSE_IPV4 = bytes.fromhex(
    "0101003c"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200008" "0001a147" "e112a643"
    "00080014" "2b91f599" "fd9e90c3" "8c7489f9" "2af9ba53" "f06be7d7"
    "80280004" "c07d4c96"
)

# Section 2.3: sample IPv6 response.
SAMPLE_RESPONSE_IPV6 = bytes.fromhex(
    "01010048"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b" "74657374" "20766563" "746f7220"
    "00200014" "0002a147" "0113a9fa" "a5d3f179" "bc25f4b5" "bed2b9d9"
    "00080014" "a382954e" "4be67bf1" "1784c97c" "8292c275" "bfe3ed41"
    "80280004" "c8fb0b4c"
)


def test_rfc5769_request_fields() -> None:
    message = stun.parse_message(SAMPLE_REQUEST)  # raises if the FINGERPRINT is wrong
    assert message.message_method == stun.Method.BINDING
    assert message.message_class == stun.Class.REQUEST
    assert message.transaction_id == VECTOR_TRANSACTION_ID
    assert message.attributes["SOFTWARE"] == "STUN test client"
    assert message.attributes["USERNAME"] == "evtj:h6vY"
    assert message.attributes["PRIORITY"] == 0x6E0001FF
    assert message.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert "ICE-CONTROLLING" not in message.attributes
    assert message.attributes["FINGERPRINT"] == 0xE57A3BCF


@pytest.mark.parametrize(
    ("data", "address"),
    [
        (SAMPLE_RESPONSE_IPV4, ("192.0.2.1", 32853)),
        (SAMPLE_RESPONSE_IPV6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
    ids=["ipv4", "ipv6"],
)
def test_rfc5769_response_fields(data: bytes, address: Address) -> None:
    message = stun.parse_message(data)
    assert message.message_method == stun.Method.BINDING
    assert message.message_class == stun.Class.RESPONSE
    assert message.transaction_id == VECTOR_TRANSACTION_ID
    assert message.attributes["SOFTWARE"] == "test vector"
    assert message.attributes["XOR-MAPPED-ADDRESS"] == address


@pytest.mark.parametrize(
    "data", [SAMPLE_REQUEST, SAMPLE_RESPONSE_IPV4, SAMPLE_RESPONSE_IPV6], ids=["request", "ipv4", "ipv6"]
)
def test_rfc5769_integrity_and_fingerprint(data: bytes) -> None:
    # Our raw-bytes verifier and aioice's agree, with the vector's password and against another one.
    assert check_stun_auth(data, VECTOR_PASSWORD) is None
    assert check_stun_auth(data, b"VOkJxbRl1RmTxUk/WvJxBT") == "bad_integrity"
    message = stun.parse_message(data)
    assert message.check_message_integrity(VECTOR_PASSWORD)
    assert not message.check_message_integrity(b"wrong password")
    # FINGERPRINT: a flipped bit in it is caught by both.
    broken = data[:-1] + bytes([data[-1] ^ 0x01])
    assert check_stun_auth(broken, VECTOR_PASSWORD) == "bad_fingerprint"
    with pytest.raises(ValueError, match="fingerprint"):
        stun.parse_message(broken)


def test_rfc5769_request_gets_role_conflict() -> None:
    """The sample request carries ICE-CONTROLLED and space padding: authenticated raw, answered 487."""
    agent = IceLiteAgent("evtj", VECTOR_PASSWORD.decode(), "h6vY", "remotepwd", now=0.0)
    response, events = agent.handle_stun(
        stun.parse_message(SAMPLE_REQUEST), SAMPLE_REQUEST, ("192.0.2.1", 32853), 1.0
    )
    assert events == []
    assert response is not None
    reply = stun.parse_message(response.data)
    assert reply.message_class == stun.Class.ERROR
    assert reply.error_code == 487
    assert reply.transaction_id == VECTOR_TRANSACTION_ID
    assert reply.check_message_integrity(VECTOR_PASSWORD)
    assert agent.counters["role_conflict"] == 1
    assert agent.consent_deadline() == 30.0  # a role conflict is not a valid check
    assert not agent.is_validated(("192.0.2.1", 32853))


# --- the agent -----------------------------------------------------------------------------------------

LOCAL_UFRAG = "srvU"
LOCAL_PWD = "serverpassword0123456789"
REMOTE_UFRAG = "brwS"
REMOTE_PWD = "browserpassword987654321"
A: Address = ("192.0.2.10", 50000)
B: Address = ("198.51.100.7", 61000)
V6: Address = ("2001:db8::7", 40000)


def make_agent(now: float = 0.0, **kwargs: Any) -> IceLiteAgent:
    return IceLiteAgent(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, REMOTE_PWD, now=now, **kwargs)


def browser_request(
    *,
    username: str = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}",
    key: bytes | None = LOCAL_PWD.encode(),
    use_candidate: bool = False,
    role: str = "ICE-CONTROLLING",
    message_class: stun.Class = stun.Class.REQUEST,
    fingerprint: bool = True,
) -> bytes:
    """A check as a browser sends it: signed with the password we gave it (our local_pwd)."""
    message = stun.Message(stun.Method.BINDING, message_class)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1853824767
    message.attributes[role] = 0x1122334455667788
    if use_candidate:
        message.attributes["USE-CANDIDATE"] = None
    if key is not None:
        message.add_message_integrity(key)  # adds FINGERPRINT too
    elif fingerprint:
        message.add_fingerprint()
    return bytes(message)


def check(agent: IceLiteAgent, data: bytes, source: Address, now: float = 1.0) -> tuple[Any, list[Any]]:
    return agent.handle_stun(stun.parse_message(data), data, source, now)


@pytest.mark.parametrize("source", [A, V6, ("::1", 9)], ids=["ipv4", "ipv6", "loopback6"])
def test_browser_check_is_answered(source: Address) -> None:
    agent = make_agent()
    data = browser_request(use_candidate=True)
    request = stun.parse_message(data)
    response, events = check(agent, data, source)
    assert response is not None and response.address == source
    reply = stun.parse_message(response.data)  # FINGERPRINT checked by parse_message
    assert reply.message_method == stun.Method.BINDING
    assert reply.message_class == stun.Class.RESPONSE
    assert reply.transaction_id == request.transaction_id
    assert reply.attributes["XOR-MAPPED-ADDRESS"] == source
    assert "FINGERPRINT" in reply.attributes
    assert reply.check_message_integrity(LOCAL_PWD.encode())
    assert not reply.check_message_integrity(REMOTE_PWD.encode())
    assert check_stun_auth(response.data, LOCAL_PWD.encode()) is None
    assert events == [CandidateValidated(source), PairSelected(source, None)]
    assert agent.is_validated(source)
    assert agent.selected == source
    assert agent.checks_answered == 1


def test_check_without_use_candidate_validates_only() -> None:
    agent = make_agent()
    response, events = check(agent, browser_request(), A)
    assert response is not None
    assert events == [CandidateValidated(A)]
    assert agent.selected is None
    # Again from the same address: answered, no new event.
    response, events = check(agent, browser_request(), A)
    assert response is not None and events == []
    # Nominated later: PairSelected only.
    _, events = check(agent, browser_request(use_candidate=True), A)
    assert events == [PairSelected(A, None)]
    _, events = check(agent, browser_request(use_candidate=True), A)
    assert events == []


def test_check_without_fingerprint_is_accepted() -> None:
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"
    message.add_message_integrity(LOCAL_PWD.encode())
    del message.attributes["FINGERPRINT"]
    data = bytes(message)
    agent = make_agent()
    response, events = check(agent, data, A)
    assert response is not None and events == [CandidateValidated(A)]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (browser_request(username=f"other:{REMOTE_UFRAG}"), "bad_username"),
        (browser_request(username=f"{LOCAL_UFRAG}:other"), "bad_username"),
        (browser_request(username=f"{REMOTE_UFRAG}:{LOCAL_UFRAG}"), "bad_username"),
        (browser_request(username=LOCAL_UFRAG), "bad_username"),
        (browser_request(key=None), "no_integrity"),
        (browser_request(key=None, fingerprint=False), "no_integrity"),
        (browser_request(key=REMOTE_PWD.encode()), "bad_integrity"),
        (browser_request(key=b"wrong"), "bad_integrity"),
        (browser_request(message_class=stun.Class.INDICATION), "not_binding_request"),
        (browser_request(message_class=stun.Class.RESPONSE), "not_binding_request"),
        (browser_request(message_class=stun.Class.ERROR), "not_binding_request"),
    ],
    ids=[
        "wrong-local-ufrag",
        "wrong-remote-ufrag",
        "swapped-ufrags",
        "no-colon",
        "no-integrity",
        "no-integrity-no-fingerprint",
        "signed-with-remote-pwd",
        "wrong-password",
        "binding-indication",
        "binding-success",
        "binding-error",
    ],
)
def test_invalid_checks_are_dropped_and_counted(data: bytes, reason: str) -> None:
    agent = make_agent()
    response, events = check(agent, data, A, now=10.0)
    assert response is None
    assert events == []
    assert agent.counters == {reason: 1}
    assert not agent.is_validated(A)
    assert agent.selected is None
    assert agent.consent_deadline() == 30.0


def test_other_methods_are_dropped() -> None:
    message = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"
    message.add_message_integrity(LOCAL_PWD.encode())
    agent = make_agent()
    response, events = check(agent, bytes(message), A)
    assert response is None and events == [] and agent.counters == {"not_binding_request": 1}


def test_forged_fingerprint_after_valid_integrity() -> None:
    """A wrong FINGERPRINT is caught by the agent itself, not only by aioice's parser."""
    data = browser_request()
    message = stun.parse_message(data)
    broken = data[:-1] + bytes([data[-1] ^ 0xFF])
    agent = make_agent()
    response, events = agent.handle_stun(message, broken, A, 1.0)
    assert response is None and events == [] and agent.counters == {"bad_fingerprint": 1}


def test_integrity_bytes_as_received_not_as_parsed() -> None:
    """The agent authenticates `data`: a parsed message paired with tampered bytes is refused."""
    data = browser_request(use_candidate=True)
    message = stun.parse_message(data)
    tampered = bytearray(data)
    tampered[30] ^= 0x01  # inside USERNAME / PRIORITY, before MESSAGE-INTEGRITY
    agent = make_agent()
    response, _ = agent.handle_stun(message, bytes(tampered), A, 1.0)
    assert response is None
    assert agent.counters["bad_fingerprint"] + agent.counters["bad_integrity"] == 1


def test_mutated_bytes_never_get_through() -> None:
    """Change any authenticated byte (header, attributes, MESSAGE-INTEGRITY) or the FINGERPRINT value:
    either aioice refuses to parse it or the agent drops it."""
    data = browser_request(use_candidate=True)
    fingerprint_type = range(len(data) - 8, len(data) - 6)
    rng = random.Random(5769)
    tried = 0
    for index in range(len(data)):
        if index in fingerprint_type:
            continue  # see test_unauthenticated_trailer_is_ignored
        for _ in range(4):
            mutated = bytearray(data)
            mutated[index] ^= rng.randrange(1, 256)
            try:
                message = stun.parse_message(bytes(mutated))
            except Exception:
                continue
            tried += 1
            agent = make_agent()
            response, events = agent.handle_stun(message, bytes(mutated), A, 1.0)
            assert response is None and events == [], index
            assert sum(agent.counters.values()) == 1
    assert tried > 10


def test_mutations_with_recomputed_fingerprint_fail_integrity() -> None:
    """A forger can fix the CRC32 FINGERPRINT but not the HMAC: every authenticated byte counts."""
    data = browser_request(use_candidate=True)
    integrity_end = len(data) - 8
    rng = random.Random(8445)
    tried = 0
    for index in range(8, integrity_end):  # transaction id, attributes, the HMAC itself
        mutated = bytearray(data)
        mutated[index] ^= rng.randrange(1, 256)
        crc = stun.message_fingerprint(bytes(mutated[:integrity_end]))
        mutated[-4:] = crc.to_bytes(4, "big")
        try:
            message = stun.parse_message(bytes(mutated))
        except Exception:
            continue
        tried += 1
        agent = make_agent()
        response, events = agent.handle_stun(message, bytes(mutated), A, 1.0)
        assert response is None and events == [], index
        assert sum(agent.counters.values()) == 1
    assert tried > 40


def test_unauthenticated_trailer_is_ignored() -> None:
    """An unknown attribute after MESSAGE-INTEGRITY is ignored (RFC 8489 section 14.5): still answered.

    Turning FINGERPRINT's type into an unknown one leaves every authenticated byte intact, so answering
    it is no different from answering the original (a replay), and a browser's retransmission anyway.
    """
    data = bytearray(browser_request(use_candidate=True))
    data[-8:-6] = b"\x80\x77"
    message = stun.parse_message(bytes(data))
    assert "FINGERPRINT" not in message.attributes
    response, events = make_agent().handle_stun(message, bytes(data), A, 1.0)
    assert response is not None and events == [CandidateValidated(A), PairSelected(A, None)]


def test_role_conflict_487() -> None:
    agent = make_agent()
    data = browser_request(role="ICE-CONTROLLED", use_candidate=True)
    response, events = check(agent, data, A)
    assert events == []
    assert response is not None and response.address == A
    reply = stun.parse_message(response.data)
    assert reply.message_class == stun.Class.ERROR
    assert reply.attributes["ERROR-CODE"] == (487, "Role Conflict")
    assert reply.transaction_id == stun.parse_message(data).transaction_id
    assert reply.check_message_integrity(LOCAL_PWD.encode())
    assert agent.counters == {"role_conflict": 1}
    assert agent.selected is None and not agent.is_validated(A)


def test_role_conflict_is_only_for_authenticated_requests() -> None:
    agent = make_agent()
    response, _ = check(agent, browser_request(role="ICE-CONTROLLED", key=b"nope"), A)
    assert response is None and agent.counters == {"bad_integrity": 1}


# --- nomination and the peer switching networks -----------------------------------------------------


def test_peer_switch_follows_use_candidate() -> None:
    agent = make_agent()
    assert check(agent, browser_request(use_candidate=True), A)[1] == [
        CandidateValidated(A),
        PairSelected(A, None),
    ]
    # Checks from B without USE-CANDIDATE: validated, not selected.
    assert check(agent, browser_request(), B)[1] == [CandidateValidated(B)]
    assert agent.selected == A
    # USE-CANDIDATE from B: switch.
    assert check(agent, browser_request(use_candidate=True), B)[1] == [PairSelected(B, A)]
    assert agent.selected == B
    assert agent.is_validated(A) and agent.is_validated(B)
    # And back.
    assert check(agent, browser_request(use_candidate=True), A)[1] == [PairSelected(A, B)]


def test_switch_to_new_address_in_one_check() -> None:
    agent = make_agent()
    check(agent, browser_request(use_candidate=True), A)
    assert check(agent, browser_request(use_candidate=True), V6)[1] == [
        CandidateValidated(V6),
        PairSelected(V6, A),
    ]


def test_validated_set_is_bounded() -> None:
    agent = make_agent()
    check(agent, browser_request(use_candidate=True), A)
    evicted: list[Address] = []
    sources = [(f"10.0.{i // 250}.{i % 250 + 1}", 1000 + i) for i in range(100)]
    for source in sources:
        _, events = check(agent, browser_request(), source)
        assert events[0] == CandidateValidated(source)
        evicted += [e.address for e in events if isinstance(e, CandidateEvicted)]
    assert len(agent.validated) == IceLiteAgent.MAX_VALIDATED
    assert agent.is_validated(A)  # the selected address is never evicted
    assert agent.selected == A
    assert evicted == sources[: 100 - (IceLiteAgent.MAX_VALIDATED - 1)]
    assert all(agent.is_validated(s) for s in sources[-(IceLiteAgent.MAX_VALIDATED - 1) :])
    # A re-check refreshes recency: the refreshed address survives the next eviction.
    survivor = sources[-15]
    check(agent, browser_request(), survivor)
    check(agent, browser_request(), B)
    assert agent.is_validated(survivor) and not agent.is_validated(sources[-14])


def test_eviction_keeps_newly_nominated_address() -> None:
    agent = make_agent(max_validated=2)
    check(agent, browser_request(use_candidate=True), A)
    check(agent, browser_request(), B)
    _, events = check(agent, browser_request(use_candidate=True), V6)
    # A was selected until this check: no longer protected, and least recently checked.
    assert events == [CandidateValidated(V6), PairSelected(V6, A), CandidateEvicted(A)]
    assert agent.validated == [B, V6]


# --- consent and liveness ----------------------------------------------------------------------------


def test_initial_deadline_gives_time_to_connect() -> None:
    agent = make_agent(now=100.0, consent_timeout=5.0)
    assert agent.consent_deadline() == 105.0
    assert not agent.consent_expired(104.999)
    assert agent.consent_expired(105.0)


def test_consent_moves_with_valid_checks_only() -> None:
    agent = make_agent(now=0.0, consent_timeout=30.0)
    check(agent, browser_request(use_candidate=True), A, now=10.0)
    assert agent.consent_deadline() == 40.0
    check(agent, browser_request(), B, now=20.0)  # any valid check, even off the selected pair
    assert agent.consent_deadline() == 50.0
    # Invalid checks do not refresh.
    check(agent, browser_request(key=b"forged"), A, now=45.0)
    check(agent, browser_request(username="x:y"), A, now=45.0)
    check(agent, browser_request(role="ICE-CONTROLLED"), A, now=45.0)
    check(agent, browser_request(message_class=stun.Class.INDICATION), A, now=45.0)
    assert agent.consent_deadline() == 50.0
    assert not agent.consent_expired(49.999)
    assert agent.consent_expired(50.0)


def test_media_refreshes_only_from_selected_address() -> None:
    agent = make_agent(now=0.0, consent_timeout=30.0)
    agent.media_received(A, 5.0)  # nothing selected yet
    assert agent.consent_deadline() == 30.0
    check(agent, browser_request(use_candidate=True), A, now=10.0)
    check(agent, browser_request(), B, now=11.0)
    agent.media_received(B, 20.0)  # validated but not selected
    agent.media_received(("203.0.113.1", 1), 20.0)
    assert agent.consent_deadline() == 41.0
    agent.media_received(A, 25.0)
    assert agent.consent_deadline() == 55.0
    assert agent.consent_expired(55.0)


def test_time_going_backwards_does_not_shorten_consent() -> None:
    agent = make_agent(now=0.0)
    check(agent, browser_request(use_candidate=True), A, now=10.0)
    check(agent, browser_request(), A, now=5.0)
    assert agent.consent_deadline() == 40.0


def test_agent_never_raises_on_odd_messages() -> None:
    """Hand-built messages with attributes of the wrong type, or bytes that don't match: dropped."""
    agent = make_agent()
    odd = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={"USERNAME": 42})
    assert agent.handle_stun(odd, b"", A, 1.0) == (None, [])
    odd = stun.Message(
        stun.Method.BINDING, stun.Class.REQUEST, attributes={"USERNAME": f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"}
    )
    for data in (b"", b"\x00" * 19, b"\x00\x01\x00\x00" + b"\x00" * 16, bytes(odd), b"\xff" * 64):
        assert agent.handle_stun(odd, data, A, 1.0) == (None, [])
    # Valid bytes but an unusable source address: dropped, not raised.
    data = browser_request()
    assert agent.handle_stun(stun.parse_message(data), data, ("not an ip", 1), 1.0) == (None, [])
    assert agent.handle_stun(stun.parse_message(data), data, ("192.0.2.1", 70000), 1.0) == (None, [])
    assert agent.counters["bad_source"] == 2


# --- property test -----------------------------------------------------------------------------------

GOOD_USERNAME = f"{LOCAL_UFRAG}:{REMOTE_UFRAG}"

usernames = st.one_of(
    st.just(GOOD_USERNAME),
    st.just(f"{REMOTE_UFRAG}:{LOCAL_UFRAG}"),
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}:{b}", st.sampled_from([LOCAL_UFRAG, REMOTE_UFRAG, ""]), st.text(max_size=8)),
)
attribute_values: dict[str, st.SearchStrategy[Any]] = {
    "USERNAME": usernames,
    "PRIORITY": st.integers(0, 2**32 - 1),
    "ICE-CONTROLLING": st.integers(0, 2**64 - 1),
    "ICE-CONTROLLED": st.integers(0, 2**64 - 1),
    "USE-CANDIDATE": st.none(),
    "SOFTWARE": st.text(max_size=20),
    "XOR-MAPPED-ADDRESS": st.sampled_from([A, B, V6]),
    "ERROR-CODE": st.tuples(st.integers(300, 699), st.text(max_size=10)),
    "DATA": st.binary(max_size=30),
    "LIFETIME": st.integers(0, 2**32 - 1),
}
keys = st.sampled_from([None, LOCAL_PWD.encode(), REMOTE_PWD.encode(), b"", b"x" * 40])


@st.composite
def stunish(draw: st.DrawFn) -> bytes:
    """Random STUN messages; half start from a browser-like signed check so the oracle is exercised."""
    plausible = draw(st.booleans())
    if plausible:
        method, message_class = stun.Method.BINDING, stun.Class.REQUEST
    else:
        method = draw(st.sampled_from(list(stun.Method)))
        message_class = draw(st.sampled_from(list(stun.Class)))
    names = draw(st.lists(st.sampled_from(sorted(attribute_values)), unique=True, max_size=6))
    attributes = {name: draw(attribute_values[name]) for name in names}
    if plausible:
        attributes["USERNAME"] = GOOD_USERNAME
    message = stun.Message(method, message_class, attributes=attributes)
    key = draw(st.one_of(st.just(LOCAL_PWD.encode()), keys)) if plausible else draw(keys)
    if key is not None:
        message.add_message_integrity(key)
    elif draw(st.booleans()):
        message.add_fingerprint()
    data = bytearray(bytes(message))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        index = draw(st.integers(0, len(data) - 1))
        data[index] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=stunish(), source=st.sampled_from([A, B, V6]), now=st.floats(0, 1e6))
def test_property_no_raise_no_unauthenticated_response(
    data: bytes, source: Address, now: float
) -> None:
    try:
        message = stun.parse_message(data)
    except Exception:
        return  # the mux drops what aioice cannot parse; the agent never sees it
    agent = make_agent(now=0.0)
    response, events = agent.handle_stun(message, data, source, now)
    authenticated = (
        message.message_method == stun.Method.BINDING
        and message.message_class == stun.Class.REQUEST
        and message.attributes.get("USERNAME") == GOOD_USERNAME
        and message.check_message_integrity(LOCAL_PWD.encode())  # aioice's own check as the oracle
    )
    if response is None:
        assert events == []
        assert sum(agent.counters.values()) == 1
        return
    assert authenticated
    reply = stun.parse_message(response.data)
    assert reply.transaction_id == message.transaction_id
    assert reply.check_message_integrity(LOCAL_PWD.encode())
    if "ICE-CONTROLLED" in message.attributes:
        assert reply.error_code == 487 and events == []
    else:
        assert reply.attributes["XOR-MAPPED-ADDRESS"] == source
        assert events[0] == CandidateValidated(source)
        assert agent.consent_deadline() == max(now, 0.0) + 30.0
