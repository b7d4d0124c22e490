"""Agent failover (issue 20): two gateways serve one name; kill -9 the one in use, the agent moves.

    client -- inet -- [dmz] -- gateway  (203.0.113.20) -- [lan] -- privdns, app
                          \\--- gateway2 (203.0.113.21) --/

``gateway.mycompany.net`` has both A records.  The agent tries them in turn.
"""

import json
import re
import signal
import time
from pathlib import Path

import pytest

from netns import procs
from netns.lab import started
from netns.scenarios.agent import (
    APP,
    GW_NAME,
    GW_PUBLIC,
    PUBLIC_DNS,
    PUBLIC_ZONES,
    WWW,
    AgentScenario,
)
from netns.topology import Topology

pytestmark = pytest.mark.lab

GW2 = "203.0.113.21"


class TwoGateways(AgentScenario):
    name = "agent-failover"
    public_zones = dict(PUBLIC_ZONES, **{"mycompany.net": PUBLIC_ZONES["mycompany.net"] + f"gateway IN A {GW2}\n"})

    def topology(self) -> Topology:
        t = Topology(self.name)
        host, ip, _ = self.clients[0]
        t.host(host).addr("eth0", f"{ip}/24").route("default", "198.51.100.1")
        inet = t.host("inet", forward=True)
        for a in ("198.51.100.1/24", f"{PUBLIC_DNS}/24", f"{WWW}/24"):
            inet.addr("eth0", a)
        inet.addr("eth1", "203.0.113.1/24")
        t.host("gateway", forward=True).addr("eth0", f"{GW_PUBLIC}/24").addr("eth1", "192.168.1.1/24") \
            .route("default", "203.0.113.1")
        t.host("gateway2", forward=True).addr("eth0", f"{GW2}/24").addr("eth1", "192.168.1.2/24") \
            .route("default", "203.0.113.1")
        t.host("privdns").addr("eth0", "192.168.1.53/24")
        t.host("app").addr("eth0", "192.168.1.20/24").addr("eth0", "192.168.1.21/24")
        t.link(host, "eth0", "inet", "eth0")
        t.switch("dmz", ("inet", "eth1"), ("gateway", "eth0"), ("gateway2", "eth0"))
        t.switch("lan", ("gateway", "eth1"), ("gateway2", "eth1"), ("privdns", "eth0"), ("app", "eth0"))
        return t

    def start_gateway(self, lab):
        conf = lab.write_conf("gateway.toml", self.gateway_conf(lab))
        p = lab.start("gateway", procs.ztna_argv("gateway", "run", "--config", str(conf)), name="gateway")
        conf2 = lab.write_conf("gateway2.toml", self.gateway_conf(lab).replace(f'listen = "{GW_PUBLIC}"', f'listen = "{GW2}"'))
        p2 = lab.start("gateway2", procs.ztna_argv("gateway", "run", "--config", str(conf2)), name="gateway2")
        procs.wait_listening(p, GW_PUBLIC, 443)
        procs.wait_listening(p2, GW2, 443)
        return p


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(TwoGateways(), tmp_path_factory.mktemp("failover")) as lab:
        yield lab


def log(lab, name):
    return Path(lab.procs[name].log).read_text(errors="replace")


def curl(lab):
    r = lab.exec("client", ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{APP}/"])
    return r.returncode == 0 and f"hello from {APP} over https" in r.stdout.decode()


def in_use(lab):
    r = lab.exec("client", procs.ztna_argv("agent", "status", "--json", "--state-dir", f"{lab.root}/agent-client"))
    t = json.loads(r.stdout)["tunnel"]
    return t["state"], t["gateway_ip"]


def test_kill_9_the_gateway_in_use_and_the_agent_moves_to_the_other(lab):
    assert curl(lab)
    state, ip = in_use(lab)
    assert state == "up" and ip in (GW_PUBLIC, GW2)
    dead, alive = ("gateway", "gateway2") if ip == GW_PUBLIC else ("gateway2", "gateway")
    other = GW2 if ip == GW_PUBLIC else GW_PUBLIC
    assert "identity alice" in log(lab, dead) and "identity alice" not in log(lab, alive)
    t0 = time.monotonic()
    lab.stop(dead, sig=signal.SIGKILL)
    tries = 0
    while True:
        tries += 1
        if curl(lab):
            break
        assert tries < 5, log(lab, "agent-client")[-2000:]
    took = time.monotonic() - t0
    print(f"\nkill -9 {dead} ({ip}) -> the first new flow through {alive} ({other}) served: {took:.2f} s, "
          f"{tries} curl(s)")
    assert in_use(lab) == ("up", other)
    a = log(lab, "agent-client")
    assert re.search(rf"gateway {GW_NAME} at {re.escape(ip)}: .*trying the next address", a), a[-1500:]
    assert f"TLS TLSv1.3 with {other}:443" in a
    assert "identity alice" in log(lab, alive)
    for _ in range(3):  # and it stays there
        assert curl(lab)
