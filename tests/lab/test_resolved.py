"""The agent on a host whose DNS is systemd-resolved's (issue 20, "Hosts with systemd-resolved").

A real systemd-resolved runs in the client's namespace (netns/resolved.py says
how, without systemd as PID 1).  The host's resolv.conf is a link to resolved's
stub file, as on Ubuntu.  The agent must put its stub and the app domains on
ztna0 only, leave resolved's global settings and the link alone, and revert
ztna0 when it stops, when it is killed (its guardian), and refuse with a clear
error when resolved does not answer.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from netns import dig as lab_dig
from netns import procs
from netns import resolved as lab_resolved
from netns.lab import started
from netns.scenarios.agent import APP, PUBLIC_DNS, WWW, AgentScenario


@pytest.fixture(autouse=True)
def _resolved_is_here():
    # Not a skip: scripts/install.sh unpacks it, so its absence is a broken install.
    if lab_resolved.missing() is not None:
        pytest.fail(f"{lab_resolved.missing()} (scripts/install.sh does this)")


STUB = "100.64.0.2"


class ResolvedHost(AgentScenario):
    name = "agent-resolved"
    res: lab_resolved.Resolved | None = None

    def link_path(self, lab) -> Path:
        return lab.root / "resolved-client" / "etc" / "resolv.conf"

    def agent_conf(self, lab, host, ident) -> Path:
        return lab.write_conf(f"agent-{host}.toml", (
            f"[agent]\ncert = \"{lab.pki_dir}/{ident}.pem\"\nkey = \"{lab.pki_dir}/{ident}.key\"\n"
            f"ca = \"{lab.pki_dir}/ca.pem\"\ngateway = \"gateway.mycompany.net\"\napps = {json.dumps(self.apps)}\n"
            f"resolv_conf = \"{self.link_path(lab)}\"\nstate_dir = \"{lab.root}/agent-{host}\"\n"
            f"resolvectl = \"{self.res.resolvectl}\"\n"))

    def launch(self, lab, host="client", ident="alice") -> procs.Proc:
        return lab.start(host, procs.ztna_argv("agent", "run", "--config", str(self.agent_conf(lab, host, ident))),
                         name=f"agent-{host}", env=self.res.env)

    def start_agent(self, lab, host, ident):
        if self.res is None:
            self.res = lab_resolved.start(lab, host, [PUBLIC_DNS])
            link = self.link_path(lab)
            link.symlink_to(self.res.stub_file)  # what Ubuntu's /etc/resolv.conf is
            self.before = global_view(lab, self.res)
        logf = lab.log_dir / f"agent-{host}.log"
        seen = logf.read_text().count("DNS set on ztna0") if logf.exists() else 0
        p = self.launch(lab, host, ident)
        procs.wait_listening(p, STUB, 53, "udp")
        # All three settings are made once the agent says so (the stub on ztna0 alone is the first of them).
        procs.wait_until(lambda: logf.read_text().count("DNS set on ztna0") > seen, what="the agent to set ztna0")
        return p


def global_view(lab, res) -> dict:
    """Everything resolved says that is not ztna0's: global and other links' servers, domains, default routes."""
    out = {}
    # ('resolvectl default-route' with no link prints the whole status, current server included: asked per link.)
    for what in (("dns",), ("domain",), ("default-route", "eth0")):
        rc, text, err = res.ctl(lab, *what)
        assert rc == 0, err
        out[what] = [l for l in text.splitlines() if "(ztna0)" not in l]
    assert out[("dns",)][0] == f"Global: {PUBLIC_DNS}", out
    out["stub-resolv.conf"] = res.stub_file.read_text()
    return out


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(ResolvedHost(), tmp_path_factory.mktemp("lab")) as lab:
        yield lab


def log(lab, name="agent-client") -> str:
    return Path(lab.procs[name].log).read_text(errors="replace")


def ztna0(lab) -> dict:
    res = lab.sc.res
    return {what: res.ctl(lab, what, "ztna0") for what in ("dns", "domain", "default-route")}


def assert_untouched(lab):
    sc = lab.sc
    assert global_view(lab, sc.res) == sc.before
    link = sc.link_path(lab)
    assert link.is_symlink() and os.readlink(link) == str(sc.res.stub_file)
    assert lab.resolv_conf_path("client").read_text() == "nameserver 127.0.0.53\n"


def test_the_agent_configures_ztna0_only(lab):
    now = ztna0(lab)
    assert now["dns"][0] == 0 and STUB in now["dns"][1], now
    assert now["domain"][1].split(":")[1].split() == ["~app.mycompany.net", "~hr.mycompany.net"], now  # the apps, exact
    assert now["default-route"][1].strip().endswith("no"), now
    assert "DNS backend resolved" in log(lab) and "nothing global changed" in log(lab)
    assert_untouched(lab)
    state = json.loads((lab.root / "agent-client" / "dns-takeover.json").read_text())
    assert state["backend"] == "resolved" and state["link"] == "ztna0" and "original" not in state


def test_names_go_through_resolved_to_the_agent_and_the_rest_to_the_global_server(lab):
    addr = lab_dig.short(lab, "client", APP)  # the namespace's resolver is resolved's stub, 127.0.0.53
    assert addr.startswith("100.") and f"DNS {APP} A -> {addr}" in log(lab), addr
    assert lab_dig.short(lab, "client", "www.example.com") == WWW
    r = lab.exec("client", ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{APP}/"])
    assert r.returncode == 0 and f"hello from {APP}" in r.stdout.decode(), r.stderr


def test_stop_reverts_the_link(lab):
    lab.stop("agent-client")
    text = Path(lab.log_dir / "agent-client.log").read_text()
    assert "reverted ztna0 in systemd-resolved" in text
    assert STUB not in lab.sc.res.ctl(lab, "dns")[1]
    assert lab_dig.short(lab, "client", APP) == ""  # the public zone has no such name: no lease any more
    assert_untouched(lab)
    lab.sc.start_agent(lab, "client", "alice")


def test_the_guardian_reverts_the_link_after_kill_9(lab):
    p = lab.procs["agent-client"]
    os.kill(p.pid, signal.SIGKILL)  # the agent alone, not its process group: the guardian must act
    procs.wait_until(lambda: "died without giving DNS back: reverted ztna0" in log(lab), timeout=10,
                     what="the guardian to revert ztna0")
    lab.procs.pop("agent-client").popen.wait()
    assert STUB not in lab.sc.res.ctl(lab, "dns")[1]
    assert not (lab.root / "agent-client" / "dns-takeover.json").exists()
    assert_untouched(lab)


def test_resolved_not_answering_refuses_start_and_changes_nothing(lab):
    res_proc = lab.procs["resolved-client"]
    os.kill(res_proc.pid, signal.SIGSTOP)
    try:
        p = lab.sc.launch(lab)
        procs.wait_until(lambda: not p.alive(), timeout=20, what="the agent to give up")
        lab.procs.pop("agent-client").popen.wait()
        text = Path(p.log).read_text()
        assert "resolvectl does not answer" in text and "did not finish within" in text and "DNS left as it is" in text
    finally:
        os.kill(res_proc.pid, signal.SIGCONT)
    assert not (lab.root / "agent-client" / "dns-takeover.json").exists()
    assert_untouched(lab)


def test_a_revert_resolved_refuses_keeps_the_record_and_restore_finishes_it(lab):
    lab.sc.start_agent(lab, "client", "alice")
    agent, res_proc = lab.procs["agent-client"], lab.procs["resolved-client"]
    os.kill(res_proc.pid, signal.SIGSTOP)
    try:
        os.kill(agent.pid, signal.SIGTERM)
        # The agent's revert times out, then the guardian's: both say so, neither loses the record.
        procs.wait_until(lambda: "giving DNS back failed" in log(lab), timeout=25, what="the guardian to give up")
        procs.wait_until(lambda: not agent.alive(), timeout=5, what="the agent to exit")
        lab.procs.pop("agent-client").popen.wait()
    finally:
        os.kill(res_proc.pid, signal.SIGCONT)
    text = Path(agent.log).read_text()
    assert "cannot give DNS back to systemd-resolved" in text and "did not finish within" in text
    state = lab.root / "agent-client" / "dns-takeover.json"
    assert json.loads(state.read_text())["link"] == "ztna0"
    r = lab.exec("client", procs.ztna_argv("agent", "restore", "--state-dir", str(lab.root / "agent-client")),
                 env=lab.sc.res.env)
    assert r.returncode == 0, r.stderr
    assert "ztna0" in r.stdout.decode() and not state.exists()
    assert STUB not in lab.sc.res.ctl(lab, "dns")[1]
    assert_untouched(lab)
