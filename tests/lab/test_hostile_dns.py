"""The hostile campaign against the DNS security resolver (issue 19).

Fuzzed, cut, looping and over-long queries over UDP and TCP (tests/lab/dnsfuzz.py,
as for the agent's stub), TCP garbage and held connections, stalled block-page
clients, and one client trying to have a domain blocked for everyone.
The probes run from the client's first address (198.51.100.10); the legitimate
user asks from its second (198.51.100.11), so the per-client rate limit keeps
them apart as it would two machines.  Each case asserts the refusal and that the
user never failed.
"""

import json
import sys
from pathlib import Path

import pytest

import dnsfuzz
import legit
from legit import Legit
from netns import dig as lab_dig
from netns import evidence, procs
from netns.lab import started
from netns.scenarios.dns_security import BP_DEFAULT, BP_SECURITY, CLIENT, CLIENT2, RESOLVER, DnsSecurity

pytestmark = pytest.mark.lab

ROGUE = str(Path(__file__).with_name("rogue_dns.py"))
DNSFUZZ = str(Path(__file__).with_name("dnsfuzz.py"))
WWW = "203.0.113.80"  # www.good.example


class HostileDns(DnsSecurity):
    name = "dns-hostile"
    server_extra = "tcp_idle = 3\ntcp_per_client = 16\n"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(HostileDns(), tmp_path_factory.mktemp("dns-hostile")) as lab:
        yield lab


def user(lab, *, tcp=False):
    argv = ["dig", "+short", "+tries=1", "+time=2", "-b", CLIENT2, f"@{RESOLVER}", "www.good.example", "A"]
    return Legit(lab, "client", argv + (["+tcp"] if tcp else []), check=lambda rc, out: out.strip() == WWW)


def rogue(lab, mode, *args, timeout=120):
    r = lab.exec("client", [sys.executable, ROGUE, RESOLVER, mode, *map(str, args)], timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return json.loads(r.stdout)


def resolver_alive(lab):
    assert lab.procs["resolver"].alive()
    assert "Traceback" not in (lab.log_dir / "resolver.log").read_text(errors="replace")


def query_log(lab):
    return evidence.json_lines(lab.log_dir / "dns-queries.jsonl")


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dns_fuzz_of_the_resolver(lab, tmp_path, proto):
    cases = dnsfuzz.cases("www.good.example", mutations=300)
    cases["short"] = [dnsfuzz.query(dnsfuzz.wire_name("www.good.example"))[:n] for n in range(2, 12)]
    flat = [(kind, m) for kind, ms in cases.items() for m in ms]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([m.hex() for _, m in flat]))
    before = len(query_log(lab))
    with user(lab, tcp=proto == "tcp") as u:
        r = lab.exec("client", [sys.executable, DNSFUZZ, proto, RESOLVER, str(path)], timeout=240)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    kinds = dnsfuzz.by_kind(flat, json.loads(r.stdout)["results"])
    # under 12 bytes there is no header to answer with: dropped (TCP: the connection closes)
    assert set(kinds["short"]) <= {"none", "closed"}, kinds["short"]
    tally = dnsfuzz.check_refusals(kinds, mutated_formerr=150)
    resolver_alive(lab)
    u.assert_clean()
    procs.wait_until(lambda: sum(1 for q in query_log(lab)[before:] if q["decision"] == "bad-query") > 150,
                     timeout=5, what="the bad queries in the query log")
    legit.record(f"resolver DNS fuzz ({proto}): over-long names, pointer loops, cuts, mutations", len(flat), tally, u)


def test_tcp_garbage(lab):
    with user(lab, tcp=True) as u:
        res = rogue(lab, "tcp-garbage", 30)
    assert sum(res.values()) == 30 and "open" not in res, res
    resolver_alive(lab)
    u.assert_clean()
    legit.record("resolver (tcp): random bytes", 30, ", ".join(f"{v} {k}" for k, v in sorted(res.items())), u)


def test_one_client_holding_tcp_connections_cannot_shut_out_the_others(lab):
    # One client keeps 600 idle connections open for 8 s (more than the 512 slots in all), opening a
    # new one for each the resolver closes: it keeps only tcp_per_client (16), each until tcp_idle
    # (3 s), and closes the rest at once; the other client's TCP queries are all answered.  Before
    # the per-client cap the one client held every slot and the other's queries were refused.
    with user(lab, tcp=True) as u:
        res = rogue(lab, "tcp-hold", 600, 8, CLIENT)
    u.assert_clean()
    assert res["opened"] > 600 and res["still_open"] <= 16, res
    assert 2.5 <= res["longest"] < 5, res  # the kept ones last until tcp_idle, no longer
    resolver_alive(lab)
    procs.wait_until(lambda: f"TCP connection(s) from {CLIENT}" in (lab.log_dir / "resolver.log").read_text(),
                     timeout=5, what="the refusals in the resolver's log")
    legit.record("resolver (tcp): one client keeping 600 idle connections open for 8 s", res["opened"],
                 f"{res['still_open']} kept at a time until tcp_idle, the rest closed at once, logged in bulk", u)


def test_one_client_cannot_have_a_domain_blocked_for_everyone(lab):
    """Defect 2 of issue 19: the tunnelling verdict of one source's queries covered every client."""
    with user(lab) as u:
        res = rogue(lab, "poison", "good.example", CLIENT)
    assert res["queries"] == 40, res
    after = lab_dig.short(lab, "client", "www.good.example", "-b", CLIENT2, server=RESOLVER)
    assert after == WWW, after  # the other client still gets the real answer
    own = lab_dig.short(lab, "client", "www.good.example", "-b", CLIENT, server=RESOLVER)
    assert own == BP_SECURITY, own  # the detector still works for the client whose queries look like a tunnel
    procs.wait_until(lambda: "under good.example" in (log := (lab.log_dir / "resolver.log").read_text())
                     and f"for client {CLIENT}" in log, timeout=5, what="the detection in the resolver's log")
    u.assert_clean()
    legit.record("resolver: one client's tunnel-like queries under good.example", 40,
                 "classified for that client only; others get the real answer", u)


@pytest.mark.parametrize("addr,port,tls", [(BP_DEFAULT, 80, False), (BP_SECURITY, 443, True)], ids=["http", "https"])
def test_stalled_clients_of_the_block_page_are_cut_off(lab, addr, port, tls):
    page = Legit(lab, "client", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                                 "--interface", CLIENT2, "-H", "Host: malware.bad.example", f"http://{BP_DEFAULT}/"],
                 check=lambda rc, out: out == "403")
    with page as u:
        res = rogue(lab, "page-stall", addr, port, 50, 15, *(["tls"] if tls else []))
    assert res["opened"] == res["closed"] == 50, res
    assert 9 <= res["first"] and res["last"] <= 13, res  # the page server's 10 s head / handshake deadline
    resolver_alive(lab)
    u.assert_clean()
    legit.record(f"block page ({'https: half a ClientHello' if tls else 'http: half a request head'})", 50,
                 "closed at the 10 s deadline", u)
