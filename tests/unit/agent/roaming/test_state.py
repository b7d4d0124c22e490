"""State record and the restore decision: exact restore, only of our own file."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ztna import resolvconf as rcf
from agent.roaming.state import Learned, StateError, StateRecord, record, restore_plan

ORIG = "nameserver 192.168.1.53\nsearch corp.example\n"
MID = "3d1219c7c4c5404aaa1f6d2a48adfda4"
OTHER = "0123456789abcdef0123456789abcdef"


def _taken():
    rc = rcf.parse_untrusted(ORIG)
    rec = record(MID, "/etc/resolv.conf", ORIG, rc, {"192.168.1.53": "eth0"}, {"corp.example": "eth0"},
                 listen="127.0.0.1", now=1000.0, pid=42)
    ours = rcf.render_takeover("127.0.0.1", ORIG, rc)
    rec.written_fingerprint = rcf.fingerprint(ours)
    return rec, ours


def test_record_keeps_servers_with_interfaces_and_round_trips():
    rec, _ = _taken()
    assert rec.servers == [Learned("192.168.1.53", "eth0")]
    assert rec.search == [Learned("corp.example", "eth0")]
    again = StateRecord.from_json_untrusted(rec.to_json())
    assert again == rec


def test_restore_puts_back_exactly_the_original_when_file_is_ours():
    rec, ours = _taken()
    plan = restore_plan(ours, rec, MID)
    assert plan.write and plan.text == ORIG


def test_restore_leaves_a_file_someone_else_changed():
    rec, _ = _taken()
    vpn = "nameserver 10.8.0.53\n"
    plan = restore_plan(vpn, rec, MID)
    assert not plan.write and "changed by someone else" in plan.reason


def test_restore_when_we_never_owned_or_backed_off():
    rec, ours = _taken()
    rec.written_fingerprint = None
    assert not restore_plan(ours, rec, MID).write


def test_missing_state_but_our_file_uses_the_embedded_original():
    _, ours = _taken()
    plan = restore_plan(ours, None, MID)
    assert plan.write and plan.text == ORIG and "no state file" in plan.reason


def test_corrupt_state_is_named_and_embedded_original_used():
    _, ours = _taken()
    plan = restore_plan(ours, None, MID, state_problem="state file is corrupt (not JSON)")
    assert plan.write and plan.text == ORIG and "corrupt" in plan.reason


def test_state_from_another_machine_is_not_applied():
    rec, _ = _taken()
    rec.machine_id = OTHER
    # The file is not ours here: nothing may be written from a foreign record.
    plan = restore_plan("nameserver 9.9.9.9\n", rec, MID)
    assert not plan.write and "another machine" in plan.reason
    # If the file is ours, its own embedded original is used, not the foreign record.
    rec2, ours = _taken()
    rec2.machine_id = OTHER
    rec2.original_text = "nameserver 203.0.113.99\n"
    plan = restore_plan(ours, rec2, MID)
    assert plan.write and plan.text == ORIG


def test_nothing_to_do_without_state_and_foreign_file():
    plan = restore_plan("nameserver 1.1.1.1\n", None, MID)
    assert not plan.write


def test_missing_resolv_conf_with_good_record_is_recreated():
    rec, _ = _taken()
    plan = restore_plan(None, rec, MID)
    assert plan.write and plan.text == ORIG
    assert not restore_plan(None, None, MID).write


def test_an_older_file_of_ours_is_still_restored():
    rec, _ = _taken()
    older = rcf.render_takeover("127.0.2.1", "nameserver 10.1.1.1\n", rcf.parse_untrusted("nameserver 10.1.1.1\n"))
    plan = restore_plan(older, rec, MID)
    assert plan.write and plan.text == "nameserver 10.1.1.1\n"


@pytest.mark.parametrize("data, words", [
    ("{", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"format": 99}', "format"),
    ('{"format": 1, "machine_id": 5}', "machine_id"),
    ('{"format": 1, "machine_id": "m", "path": "/p", "original_text": "", "servers": [{"value": "x"}]}', "bad field"),
    ('{"format": 1, "machine_id": "m", "path": "/p", "original_text": "nameserver nope", "listen": "127.0.0.1"}', "unusable"),
    ('{"format": 1, "machine_id": "m", "path": "/p", "original_text": "", "listen": "127.0.0.1", "written_fingerprint": "short"}', "fingerprint"),
    (b"\xff\xfe", "not JSON"),
    ("[" * 100000, "not JSON"),
])
def test_corrupt_state_files(data, words):
    with pytest.raises(StateError, match=words):
        StateRecord.from_json_untrusted(data)


@settings(max_examples=200, deadline=None)
@given(hs.binary(max_size=300))
def test_fuzz_state_only_state_error(data):
    try:
        StateRecord.from_json_untrusted(data)
    except StateError:
        pass


@settings(max_examples=200, deadline=None)
@given(hs.dictionaries(hs.sampled_from(["format", "machine_id", "path", "original_text", "servers", "search",
                                        "written_fingerprint", "listen", "recorded_at", "pid"]),
                       hs.one_of(hs.none(), hs.integers(), hs.text(max_size=10), hs.lists(hs.text(max_size=5), max_size=2),
                                 hs.lists(hs.dictionaries(hs.text(max_size=5), hs.text(max_size=5)), max_size=2))))
def test_fuzz_state_fields(doc):
    doc.setdefault("format", 1)
    try:
        StateRecord.from_json_untrusted(json.dumps(doc))
    except StateError:
        pass


def test_a_resolved_record_round_trips_and_a_bad_backend_is_refused():
    rec = StateRecord(machine_id="m" * 32, path="/etc/resolv.conf", original_text="",
                      servers=[Learned("192.168.1.53", "eth0")], search=[Learned("corp.example", "eth0")],
                      listen="127.0.0.1", backend="resolved", link="ztna-dns")
    back = StateRecord.from_json_untrusted(rec.to_json())
    assert back == rec
    doc = json.loads(rec.to_json())
    doc["backend"] = "dnsmasq"
    with pytest.raises(StateError, match="bad backend"):
        StateRecord.from_json_untrusted(json.dumps(doc))
    doc = json.loads(rec.to_json())
    del doc["backend"], doc["link"]  # a record written before this backend existed
    assert StateRecord.from_json_untrusted(json.dumps(doc)).backend == "resolvconf"
