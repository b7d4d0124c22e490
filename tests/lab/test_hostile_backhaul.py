"""Hostile input at the PoP's site side (issue 16), each case beside a branch user's legitimate loop.

Built on the pop-rules lab (tests/lab/test_pop_rules.py: the backhaul scenario with the PoP's DNS
forwarder and rules) plus a second site, branch2, whose certificate the attacker holds, and a
certificate for "mallory", which is no site at all.  The branch user keeps fetching whoami through
the branch1 site tunnel (and, for the DNS cases, asking the PoP's DNS) while:

* malformed DNS queries go to the PoP's DNS forwarder through the site tunnel (UDP and TCP);
* mallory's certificate dials the site name; branch2's certificate asks to be branch1;
* branch2, welcomed, sends DATA whose inner source is branch1's user (spoofed): none of it may leave
  the PoP (an nft counter on the web host);
* branch2, welcomed, sends bytes that are no frame: CLOSE with the reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import dnsfuzz
import legit
from legit import Legit
from netns import procs
from netns.lab import started
from netns.scenarios.backhaul import POP, SITE_NAME, USER, WEB
from test_pop_rules import POP_DNS, PopRulesScenario

DNSFUZZ = str(Path(__file__).with_name("dnsfuzz.py"))
LAN2 = "10.20.0.0/24"
SINK_PORT = 9


class HostileSites(PopRulesScenario):
    name = "backhaul-hostile"

    def start(self, lab) -> None:
        lab.ca()
        lab.issue("branch2", "client")
        lab.issue("mallory", "client")
        super().start(lab)
        # The PoP once more, with branch2 in [sites] (the attacker's own site, with its own LAN).
        lab.stop("pop")
        conf = lab.conf_dir / "pop-rules.toml"
        text = conf.read_text().replace("[sites]\n", f"[sites]\nbranch2 = {{ lan = [\"{LAN2}\"] }}\n", 1)
        conf = lab.write_conf("pop-hostile.toml", text)
        pop = lab.start("pop", procs.ztna_argv("pop", "run", "--config", str(conf)), name="pop")
        procs.wait_listening(pop, POP, 443)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    sc = HostileSites()
    with started(sc, tmp_path_factory.mktemp("backhaul-hostile")) as lab:
        lab.start("branch", procs.ztna_argv("site", "run", "--config", str(sc.site_conf)), name="site")
        procs.wait_until(lambda: "site branch1 up" in poplog(lab), timeout=15, what="branch1's tunnel at the PoP")
        procs.wait_listening(lab.procs["pop"], POP_DNS, 53, "udp")
        # A counter on the web host for what reaches the sink port: the spoofed packets' destination.
        for cmd in (["add", "table", "ip", "ztna_probe"],
                    ["add", "chain", "ip", "ztna_probe", "in", "{ type filter hook input priority 0 ; }"],
                    ["add", "rule", "ip", "ztna_probe", "in", "udp", "dport", str(SINK_PORT), "counter"]):
            r = lab.exec("web", ["nft", *cmd])
            assert r.returncode == 0, r.stderr.decode()
        yield lab


def poplog(lab) -> str:
    return Path(lab.procs["pop"].log).read_text(errors="replace")


def user(lab, *, dns: bool = False) -> Legit:
    if dns:
        return Legit(lab, "user", ["dig", "+short", "+tries=1", "+time=2", f"@{POP_DNS}", "app.saas.example", "A"],
                     check=lambda rc, out: out.strip() == WEB)
    return Legit(lab, "user", ["curl", "-sS", "--max-time", "5", f"http://{WEB}/"],
                 check=lambda rc, out: rc == 0 and "to client" in out)


def pop_alive(lab) -> None:
    assert lab.procs["pop"].alive()
    assert lab.procs["site"].alive()
    assert "Traceback" not in poplog(lab)


def probe(lab, *args: str) -> dict:
    pki = lab.pki_dir
    r = lab.exec("inet", [sys.executable, "-m", "netns.popprobe", *args, "--addr", POP, "--sni", SITE_NAME,
                          "--ca", f"{pki}/ca.pem"], timeout=30)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout.decode().strip().splitlines()[-1])


def creds(lab, name: str) -> list[str]:
    return ["--cert", f"{lab.pki_dir}/{name}.pem", "--key", f"{lab.pki_dir}/{name}.key"]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_fuzz_of_the_pops_forwarder(lab, tmp_path, proto):
    cases = dnsfuzz.cases("app.saas.example", mutations=150)
    flat = [(kind, m) for kind, ms in cases.items() for m in ms]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([m.hex() for _, m in flat]))
    with user(lab, dns=True) as u:
        r = lab.exec("user", [sys.executable, DNSFUZZ, proto, POP_DNS, str(path)], timeout=240)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    tally = dnsfuzz.check_refusals(dnsfuzz.by_kind(flat, json.loads(r.stdout)["results"]), mutated_formerr=50)
    pop_alive(lab)
    u.assert_clean()
    legit.record(f"PoP DNS forwarder fuzz ({proto}) through a site tunnel", len(flat), tally, u)


def test_a_certificate_that_is_no_site_is_refused(lab):
    with user(lab) as u:
        got = probe(lab, "site", "--site", "mallory", *creds(lab, "mallory"))
    close = [f for f in got.get("frames", []) if f["type"] == "CLOSE"]
    assert got["closed"] and close and "'mallory' is not a site of this PoP" in close[0]["reason"], got
    assert not [f for f in got["frames"] if f["type"] == "WELCOME"], got
    procs.wait_until(lambda: "'mallory' is not a site of this PoP" in poplog(lab), timeout=5, what="the refusal log")
    pop_alive(lab)
    u.assert_clean()
    legit.record("site tunnel: a client certificate that names no site", 1, f"CLOSE {close[0]['reason']!r}, logged", u)


def test_a_site_cannot_claim_another_sites_name(lab):
    with user(lab) as u:
        got = probe(lab, "site", "--site", "branch1", *creds(lab, "branch2"))
    close = [f for f in got.get("frames", []) if f["type"] == "CLOSE"]
    assert got["closed"] and close and "asked to be site 'branch1'" in close[0]["reason"], got
    pop_alive(lab)
    # branch1's own tunnel was not replaced: its user's loop never failed, and no second "up" line.
    assert poplog(lab).count("site branch1 up") == 1
    u.assert_clean()
    legit.record("site tunnel: branch2's certificate asks to be branch1", 1, f"CLOSE {close[0]['reason']!r}", u)


def test_spoofed_sources_from_a_site_never_leave_the_pop(lab):
    def sink() -> int:
        out = lab.exec("web", ["nft", "-j", "list", "table", "ip", "ztna_probe"]).stdout.decode()
        rules = [x["rule"] for x in json.loads(out)["nftables"] if "rule" in x]
        return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)

    before = sink()
    with user(lab) as u:
        spoofed = probe(lab, "site", "--site", "branch2", *creds(lab, "branch2"), "--then", "spoof",
                        "--spoof", USER, "--dst", WEB, "--count", "200")
        own = probe(lab, "site", "--site", "branch2", *creds(lab, "branch2"), "--then", "spoof",
                    "--spoof", "10.20.0.7", "--dst", WEB, "--count", "5")
    assert [f["type"] for f in spoofed["frames"]][:1] == ["WELCOME"] and spoofed["sent"] == 200, spoofed
    pop_alive(lab)
    u.assert_clean()
    # The check can fail: branch2's packets from its own LAN do reach the sink (the same path, the same port).
    procs.wait_until(lambda: sink() - before >= 5, timeout=5, what="branch2's own packets at the sink")
    assert sink() - before == 5, (before, sink())  # and not one of the 200 spoofed ones
    assert own["sent"] == 5
    procs.wait_until(lambda: f"site branch2: dropped 200 packet(s) from outside its LAN (last from {USER})" in poplog(lab),
                     timeout=5, what="the PoP's line about the spoofed packets")
    legit.record("site tunnel: 200 packets from branch2 with branch1's user as source", 200,
                 f"none left the PoP ({sink() - before} of branch2's own 5 did), logged in one line", u)


def test_garbage_inside_a_site_tunnel_is_closed_with_the_reason(lab):
    with user(lab) as u:
        got = probe(lab, "site", "--site", "branch2", *creds(lab, "branch2"), "--then", "garbage")
    close = [f for f in got.get("after", []) if f["type"] == "CLOSE"]
    assert got["closed"] and close and "bad frame" in close[0]["reason"], got
    pop_alive(lab)
    u.assert_clean()
    legit.record("site tunnel: bytes that are no frame after WELCOME", 1, f"CLOSE {close[0]['reason'][:60]!r}", u)
