"""ztna.status: a role's record judged into a row; the command over a temporary run folder (no root)."""

import json
import os
import time

from click.testing import CliRunner

from ztna import runstate
from ztna.status import RUNNING, STOPPED, UNHEALTHY, UNKNOWN, judge, status_cmd


def test_dns_and_proxy_rows():
    doc = {"pid": 42, "config": "/etc/ztna/dns.toml", "started": time.time() - 5, "reloads": 0, "last_reload": None}
    assert judge("dns", doc, alive=True, source="s").state == RUNNING
    assert judge("dns", doc, alive=False, source="s").state == STOPPED
    refused = dict(doc, last_reload={"ok": False, "message": "dns.toml:3: not valid TOML", "time": time.time()})
    row = judge("proxy", refused, alive=True, source="s")
    assert row.state == UNHEALTHY and "REFUSED" in row.detail and "dns.toml:3" in row.detail
    assert judge("dns", None, alive=False, source="/run/ztna/dns.json").detail == "no record in /run/ztna/dns.json"


def test_agent_roaming_and_gateway_rows():
    agent = {"identity": "alice", "tunnel": {"state": "up", "gateway": "gw.example", "last_error": ""}, "leases": [{}]}
    assert "tunnel up to gw.example, 1 lease(s)" in judge("agent", agent, alive=True, source="s").detail
    roam = {"pid": 7, "state": "open", "reason": "cloud_unreachable", "detail": "fail-open"}
    assert judge("roaming", roam, alive=True, source="s").state == UNHEALTHY
    assert judge("roaming", dict(roam, state="protected"), alive=True, source="s").state == RUNNING
    assert judge("roaming", dict(roam, state="stopped"), alive=True, source="s").state == STOPPED
    assert judge("gateway", None, alive=False, source="/run/ztna/gateway.json").state == STOPPED
    assert judge("gateway", {"pid": 9, "config": "gateway.toml", "started": time.time()}, alive=True,
                 source="s").state == RUNNING


def test_the_command_reads_the_run_folder(tmp_path):
    args = ["--run-dir", str(tmp_path), "--agent-state-dir", str(tmp_path / "a"),
            "--roaming-state-dir", str(tmp_path / "r"), "--json"]
    out = CliRunner().invoke(status_cmd, args)
    assert out.exit_code == 3 and all(r["state"] in (STOPPED, UNKNOWN) for r in json.loads(out.output))
    st = runstate.RunState(tmp_path, "dns", config=tmp_path / "dns.toml")
    st.write()  # this test process stands for a running resolver
    out = CliRunner().invoke(status_cmd, args)
    rows = {r["role"]: r for r in json.loads(out.output)}
    assert out.exit_code == 0 and rows["dns"]["state"] == RUNNING and rows["dns"]["pid"] == os.getpid()
    st.reloaded(ok=False, message="refused", changes=[], now=time.time())
    assert CliRunner().invoke(status_cmd, args).exit_code == 1
