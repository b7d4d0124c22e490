"""ztna.runstate: the state files a service writes and the reload request (no root)."""

import json
import os
import signal
import threading

import pytest

from ztna import runstate


def test_write_read_reloaded_remove(tmp_path):
    st = runstate.RunState(tmp_path / "run", "proxy", config=tmp_path / "p.toml", now=100.0)
    st.write()
    assert int((tmp_path / "run" / "proxy.pid").read_text()) == os.getpid()
    doc = runstate.read(tmp_path / "run", "proxy")
    assert doc["pid"] == os.getpid() and doc["reloads"] == 0 and doc["config"].endswith("p.toml")
    st.reloaded(ok=False, message="bad", changes=[], now=101.0)
    assert runstate.read(tmp_path / "run", "proxy")["last_reload"] == {"ok": False, "message": "bad", "changes": [],
                                                                      "time": 101.0}
    st.remove()
    assert runstate.read(tmp_path / "run", "proxy") is None and not (tmp_path / "run" / "proxy.pid").exists()


def test_remove_leaves_a_newer_instances_files(tmp_path):
    st = runstate.RunState(tmp_path, "dns", config=None)
    st.write()
    (tmp_path / "dns.json").write_text(json.dumps({"pid": 1, "reloads": 0}))
    st.remove()
    assert (tmp_path / "dns.json").exists()


def test_reload_without_a_running_service(tmp_path):
    with pytest.raises(runstate.RunStateError, match="is `ztna dns run` running with --run-dir"):
        runstate.request_reload(tmp_path, "dns")
    (tmp_path / "dns.json").write_text(json.dumps({"pid": 2 ** 22 + 12345, "reloads": 0}))
    with pytest.raises(runstate.RunStateError, match="not running"):
        runstate.request_reload(tmp_path, "dns")


def test_reload_waits_for_the_services_verdict(tmp_path):
    st = runstate.RunState(tmp_path, "proxy", config=None)
    st.write()
    got = threading.Event()

    def on_hup(*_):
        got.set()

    old = signal.signal(signal.SIGHUP, on_hup)
    try:
        def service():
            got.wait(5)
            st.reloaded(ok=True, message="reloaded", changes=["[policy] deny: +x"], now=1.0)

        t = threading.Thread(target=service)
        t.start()
        r = runstate.request_reload(tmp_path, "proxy", timeout=5)
        t.join()
    finally:
        signal.signal(signal.SIGHUP, old)
    assert r == runstate.ReloadResult(True, "reloaded", ["[policy] deny: +x"])
