import json
import os

import pytest

from agent import takeover as T

ORIG = "# from DHCP\nnameserver 198.51.100.53\nnameserver 198.51.100.54\nsearch corp.example\noptions edns0\n"


def test_take_over_and_restore(tmp_path):
    resolv, state = tmp_path / "resolv.conf", tmp_path / "state.json"
    resolv.write_text(ORIG)
    servers = T.take_over(resolv, "100.64.0.2", state, 1234)
    assert servers == ["198.51.100.53", "198.51.100.54"]
    text = resolv.read_text()
    assert T.nameservers(text) == ["100.64.0.2"]
    assert "search corp.example" in text and "options edns0" in text and T.MARK in text
    assert oct(os.stat(state).st_mode & 0o777) == "0o600"
    assert "restored" in T.restore(state)
    assert resolv.read_text() == ORIG and not state.exists()


def test_file_changed_by_someone_else_is_left_alone(tmp_path):
    resolv, state = tmp_path / "resolv.conf", tmp_path / "state.json"
    resolv.write_text(ORIG)
    T.take_over(resolv, "100.64.0.2", state, 1)
    resolv.write_text("nameserver 10.8.0.1\n")  # a VPN rewrote it meanwhile
    assert "left as it is" in T.restore(state)
    assert resolv.read_text() == "nameserver 10.8.0.1\n"


def test_refuses_a_file_with_no_resolver_or_already_taken(tmp_path):
    resolv, state = tmp_path / "resolv.conf", tmp_path / "state.json"
    resolv.write_text("search x\n")
    with pytest.raises(T.TakeoverError, match="names no nameserver"):
        T.take_over(resolv, "100.64.0.2", state, 1)
    resolv.write_text(T.render(ORIG, "100.64.0.2", state, 1))
    with pytest.raises(T.TakeoverError, match="ztna agent restore"):
        T.take_over(resolv, "100.64.0.2", state, 1)


def test_stale_state_of_a_dead_agent_is_recovered(tmp_path):
    resolv, state = tmp_path / "resolv.conf", tmp_path / "state.json"
    resolv.write_text(ORIG)
    T.take_over(resolv, "100.64.0.2", state, 999999)  # no such pid
    assert "restored" in T.recover_stale(state)
    assert resolv.read_text() == ORIG
    assert T.recover_stale(state) is None


def test_corrupt_state_is_a_clear_error(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"nope": 1}))
    with pytest.raises(T.TakeoverError, match="corrupt"):
        T.restore(state)


def test_guardian_restores_when_the_agent_dies(tmp_path):
    resolv, state = tmp_path / "resolv.conf", tmp_path / "state.json"
    resolv.write_text(ORIG)
    pid = os.fork()
    if pid == 0:  # the "agent": take over, start the guardian, die without cleanup
        try:
            T.take_over(resolv, "100.64.0.2", state, os.getpid())
            T.start_guardian(state)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    import time

    deadline = time.time() + 5
    # The guardian writes resolv.conf back and then removes the record: wait for both (waiting for the first
    # alone raced the second when the machine was busy).
    while (resolv.read_text() != ORIG or state.exists()) and time.time() < deadline:
        time.sleep(0.02)
    assert resolv.read_text() == ORIG and not state.exists()


def test_guardian_restores_even_while_a_child_of_the_agent_holds_its_pipe(tmp_path):
    """pyroute2 and the like fork helpers after the guardian: their copy of the pipe must not delay the restore."""
    import signal
    import time

    resolv, state, helper_pid = tmp_path / "resolv.conf", tmp_path / "state.json", tmp_path / "helper.pid"
    resolv.write_text(ORIG)
    pid = os.fork()
    if pid == 0:  # the "agent"
        try:
            T.take_over(resolv, "100.64.0.2", state, os.getpid())
            T.start_guardian(state)
            helper = os.fork()
            if helper == 0:  # a helper that outlives the agent, holding every fd the agent had
                time.sleep(30)
                os._exit(0)
            helper_pid.write_text(str(helper))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    helper = int(helper_pid.read_text())
    try:
        deadline = time.time() + 5
        while (resolv.read_text() != ORIG or state.exists()) and time.time() < deadline:
            time.sleep(0.02)
        assert resolv.read_text() == ORIG and not state.exists()
        os.kill(helper, 0)  # the helper was still there all along
    finally:
        os.kill(helper, signal.SIGKILL)


def test_a_symlinked_resolver_file_stays_a_symlink_through_take_over_and_restore(tmp_path):
    target, resolv, state = tmp_path / "real-resolv.conf", tmp_path / "resolv.conf", tmp_path / "state.json"
    target.write_text(ORIG)
    resolv.symlink_to(target)
    T.take_over(resolv, "100.64.0.2", state, 1234)
    assert resolv.is_symlink() and os.readlink(resolv) == str(target)
    assert T.nameservers(target.read_text()) == ["100.64.0.2"]
    assert "restored" in T.restore(state)
    assert resolv.is_symlink() and os.readlink(resolv) == str(target)
    assert target.read_text() == ORIG


def _resolvectl(tmp_path, fail_on: str = "", stderr: str = "Connection timed out"):
    """An executable standing in for resolvectl in unit tests: logs its argv, fails on one verb."""
    log = tmp_path / "calls"
    tool = tmp_path / "resolvectl"
    tool.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n"
                    f"if [ \"$1\" = \"{fail_on}\" ]; then echo '{stderr}' >&2; exit 1; fi\n")
    tool.chmod(0o755)
    return str(tool), log


DNS_OUT = "Global: 198.51.100.53\nLink 2 (eth0): 10.0.0.53\n"


def test_resolved_link_settings_and_revert(tmp_path):
    tool, calls = _resolvectl(tmp_path)
    state = tmp_path / "state.json"
    servers = T.take_over_link(tool, "ztna0", "100.64.0.2", ["~corp.example"], DNS_OUT, state, 7)
    assert servers == ["198.51.100.53", "10.0.0.53"]
    assert calls.read_text().splitlines() == ["dns ztna0 100.64.0.2", "domain ztna0 ~corp.example",
                                              "default-route ztna0 no"]
    assert json.loads(state.read_text())["backend"] == "resolved"
    assert "reverted ztna0" in T.restore(state)
    assert calls.read_text().splitlines()[-1] == "revert ztna0" and not state.exists()


def test_resolved_refusing_a_setting_reverts_the_link_and_records_nothing(tmp_path):
    tool, calls = _resolvectl(tmp_path, fail_on="domain")
    state = tmp_path / "state.json"
    with pytest.raises(T.TakeoverError, match="refused.*Connection timed out.*DNS left as it was"):
        T.take_over_link(tool, "ztna0", "100.64.0.2", ["~corp.example"], DNS_OUT, state, 7)
    assert calls.read_text().splitlines()[-1] == "revert ztna0" and not state.exists()
    with pytest.raises(T.TakeoverError, match="knows no DNS server"):
        T.take_over_link(tool, "ztna0", "100.64.0.2", ["~x"], "Global:\n", state, 7)


def test_a_failed_revert_keeps_the_record_for_a_later_restore(tmp_path):
    tool, _ = _resolvectl(tmp_path, fail_on="revert")
    state = tmp_path / "state.json"
    T.take_over_link(tool, "ztna0", "100.64.0.2", ["~corp.example"], DNS_OUT, state, 7)
    with pytest.raises(T.TakeoverError, match="cannot give DNS back.*kept"):
        T.restore(state)
    assert state.exists()
    gone, _ = _resolvectl(tmp_path / "..", fail_on="revert", stderr='Failed to resolve interface "ztna0": No such device')
    st = json.loads(state.read_text())
    st["resolvectl"] = gone
    state.write_text(json.dumps(st))
    assert "is gone" in T.restore(state) and not state.exists()


def test_a_resolvectl_that_hangs_is_cut_off(tmp_path, monkeypatch):
    from ztna import resolvectl
    monkeypatch.setattr(resolvectl, "TIMEOUT", 0.3)
    tool = tmp_path / "resolvectl"
    tool.write_text("#!/bin/sh\nexec sleep 5\n")
    tool.chmod(0o755)
    err, out = resolvectl.probe(str(tool))
    assert "did not finish within 0.3 s" in err and out == ""
