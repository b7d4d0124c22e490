"""Scenario ``dns-security`` (SPEC.md §4, seed 001): what a blocked name gets, by
record type and by why it is bad, asked with dig and checked in the captures.

Hosts: ``client`` 198.51.100.10, ``isp`` (router), ``cloud`` (the resolver at
208.67.222.222 and block pages at 192.0.2.80-82), ``authdns`` 203.0.113.53
(upstream, serving ``netns/data/dns-security/*.zone``), and ``outsider``
198.18.0.10 (a network the resolver does not serve).

The expected answers are typed in below from SPEC.md §4, independently of the
resolver's own table, so a wrong cell in the resolver is caught here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import dig, evidence, flow
from ..dig import norm_rdata
from ..capture import read
from ..lab import Lab
from ..procs import wait_listening, ztna_argv
from ..report import Step
from ..scenario import Scenario
from ..topology import Topology

DATA = Path(__file__).resolve().parent.parent / "data" / "dns-security"
RESOLVER = "208.67.222.222"
UPSTREAM = "203.0.113.53"
CLIENT = "198.51.100.10"
CLIENT2 = "198.51.100.11"
OUTSIDER = "198.18.0.10"
BP_DEFAULT, BP_SECURITY, BP_LIST = "192.0.2.80", "192.0.2.81", "192.0.2.82"
DEVICE = "laptop-1"

BP, REF, REAL = "block page", "REFUSED", "real answer"
# SPEC.md §4, typed in for the lab: row -> (types asked, one cell per column).
ROWS = [
    ("A, AAAA", ["A", "AAAA"]),
    ("ANY, CNAME, PTR, RRSIG, SPF, SRV, TXT, obsolete", ["TXT", "SRV"]),
    ("every other type (MX, CAA, ...)", ["MX", "CAA"]),
]
COLUMNS = [
    ("tunnel.bad.example", "DNS Tunneling VPN", [BP, REF, REF]),
    ("listed.bad.example", "destination list: block", [BP, REF, REAL]),
    ("malware.bad.example", "other security (malware)", [BP, REF, REAL]),
    ("ddns.bad.example", "Dynamic DNS", [BP, REAL, REAL]),
    ("gambling.bad.example", "content (gambling)", [BP, REAL, REAL]),
    ("www.good.example", "allowed", [REAL, REAL, REAL]),
]
# Which block page each reason points at (the lab's dns.toml below says the same).
BLOCK_ADDRESS = {"tunnel.bad.example": BP_SECURITY, "listed.bad.example": BP_LIST, "malware.bad.example": BP_SECURITY,
                 "ddns.bad.example": BP_DEFAULT, "gambling.bad.example": BP_DEFAULT}


def zone_records() -> dict[tuple[str, str], set[str]]:
    """(name, type) -> rdata texts, read from the lab's zone files (the upstream's truth)."""
    out: dict[tuple[str, str], set[str]] = {}
    for f in sorted(DATA.glob("*.zone")):
        origin = ""
        for line in f.read_text().splitlines():
            line = line.split(";", 1)[0].strip()
            if line.startswith("$ORIGIN"):
                origin = line.split()[1].rstrip(".")
                continue
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1] == "IN":
                name = origin if parts[0] == "@" else f"{parts[0]}.{origin}"
                out.setdefault((name, parts[2]), set()).add(norm_rdata(parts[2], parts[3]))
    return out


def dns_toml(lab: Lab, server_extra: str = "") -> str:
    """The resolver's dns.toml; ``server_extra``: more ``[server]`` lines (a test's own limits)."""
    ca = lab.pki_dir / "ca"
    return f"""# Written by the dns-security scenario.
[server]
listen = ["{RESOLVER}"]
upstreams = ["{UPSTREAM}"]
query_log = "{lab.log_dir / 'dns-queries.jsonl'}"
block_ttl = 30
{server_extra}

[ratelimit]
qps = 500
burst = 1000

[blockpage]
address = "{BP_DEFAULT}"
ca_cert = "{ca}.pem"
ca_key = "{ca}.key"

[blockpage.addresses]
security = "{BP_SECURITY}"
"dns-tunneling-vpn" = "{BP_SECURITY}"
"destination-list" = "{BP_LIST}"

[categories]
files = ["{DATA / 'categories.txt'}"]

[lists.lab-block]
files = ["{DATA / 'block.txt'}"]

[lists.lab-allow]
files = ["{DATA / 'allow.txt'}"]

[[policy]]
name = "office"
networks = ["198.51.100.0/24"]
block_categories = ["dns-tunneling-vpn", "malware", "phishing", "command-and-control", "dynamic-dns", "gambling"]
block_lists = ["lab-block"]
allow_lists = ["lab-allow"]

[[policy]]
name = "roaming-laptop"
devices = ["{DEVICE}"]
block_categories = ["dns-tunneling-vpn", "malware", "phishing", "command-and-control"]
block_lists = ["lab-block"]
"""


def dns_packets(path: Path) -> list:
    """(message, its dnslib record, "UDP" or "TCP") for every DNS message in a capture that dnslib reads.

    The captured message (netns.evidence.dns) is the step's evidence; the
    dnslib record has what the SPEC §4 checks look at (every type, EDE)."""
    out = []
    for m in evidence.dns(read(path)):
        rec = m.record
        if rec is not None:
            out.append((m, rec, m.proto.upper()))
    return out


class DnsSecurity(Scenario):
    """SPEC.md §4 in the lab: every row against every column, the block page, the log."""

    name = "dns-security"
    summary = "DNS security resolver: the record-type x category table of SPEC §4, block page over HTTP(S)"
    server_extra = ""  # more [server] lines for the resolver (tests set their own limits)
    cell_axes = ("record type asked", "category")

    def topology(self) -> Topology:
        t = Topology(self.name)
        # A second address on the client stands for a second user (rate-limit checks).
        t.host("client").addr("eth0", f"{CLIENT}/24").addr("eth0", f"{CLIENT2}/24").route("default", "198.51.100.1")
        isp = t.host("isp", forward=True)
        isp.addr("eth0", "198.51.100.1/24").addr("eth1", "208.67.222.1/24").addr("eth2", "203.0.113.1/24")
        isp.addr("eth3", "198.18.0.1/24").route("192.0.2.0/24", RESOLVER)
        cloud = t.host("cloud").addr("eth0", f"{RESOLVER}/24")
        for a in (BP_DEFAULT, BP_SECURITY, BP_LIST):
            cloud.addr("eth0", f"{a}/32")
        cloud.route("default", "208.67.222.1")
        t.host("authdns").addr("eth0", f"{UPSTREAM}/24").route("default", "203.0.113.1")
        t.host("outsider").addr("eth0", f"{OUTSIDER}/24").route("default", "198.18.0.1")
        t.link("client", "eth0", "isp", "eth0")
        t.link("isp", "eth1", "cloud", "eth0")
        t.link("isp", "eth2", "authdns", "eth0")
        t.link("isp", "eth3", "outsider", "eth0")
        return t

    def start(self, lab: Lab) -> None:
        lab.ca()
        conf = lab.write_conf("dns.toml", dns_toml(lab, self.server_extra))
        zones = [a for z in sorted(DATA.glob("*.zone")) for a in ("--zone", str(z))]
        auth = lab.start("authdns", ztna_argv("authdns", "run", *zones, "--listen", UPSTREAM), name="authdns")
        wait_listening(auth, UPSTREAM, 53, "udp")
        # --run-dir: its pid and state files, for `ztna dns reload` (tests/lab/test_ops.py)
        dns = lab.start("cloud", ztna_argv("dns", "run", "--config", str(conf), "--verbose",
                                           "--run-dir", str(lab.root / "run-dns")), name="resolver")
        wait_listening(dns, RESOLVER, 53, "udp")
        wait_listening(dns, RESOLVER, 53, "tcp")
        wait_listening(dns, BP_DEFAULT, 80, "tcp")
        wait_listening(dns, BP_SECURITY, 443, "tcp")
        lab.set_resolvers("client", [RESOLVER])

    def _dig(self, lab: Lab, host: str, *args: str) -> dict:
        d = dig.ask(lab, host, f"@{RESOLVER}", *args)
        d["args"] = " ".join(args)
        return d

    def drive(self, lab: Lab) -> dict:
        seen: dict = {"table": {}}
        for name, _, _ in COLUMNS:
            for _, types in ROWS:
                for t in types:
                    seen["table"][f"{name} {t}"] = self._dig(lab, "client", name, t)
        seen["table_done"] = time.time()
        seen["tcp"] = self._dig(lab, "client", "+noedns", "big.good.example", "TXT")
        seen["device"] = self._dig(lab, "client", f"+ednsopt=65001:{DEVICE.encode().hex()}", "gambling.bad.example", "A")
        seen["outsider"] = self._dig(lab, "outsider", "www.good.example", "A")
        seen["cname"] = {t: self._dig(lab, "client", "shop.good.example", t) for t in ("A", "TXT", "MX")}
        ca = str(lab.pki_dir / "ca.pem")
        seen["http"] = self._curl(lab, ["http://gambling.bad.example/"])
        seen["https"] = self._curl(lab, ["--cacert", ca, "https://malware.bad.example/"])
        seen["https_list"] = self._curl(lab, ["--cacert", ca, "https://listed.bad.example/"])
        time.sleep(1.0)  # the resolver flushes its query log twice a second
        stats = lab.exec("cloud", ztna_argv("dns", "stats", "--log", str(lab.log_dir / "dns-queries.jsonl"), "--json"))
        seen["stats"] = stats.stdout.decode(errors="replace")
        return seen

    def _curl(self, lab: Lab, args: list[str]) -> dict:
        r = lab.exec("client", ["curl", "-sS", "-m", "8", "-w", "\n%{http_code} %{remote_ip}:%{remote_port}", *args], timeout=20)
        body, _, tail = r.stdout.decode(errors="replace").rpartition("\n")
        code, _, remote = tail.partition(" ")
        return {"rc": r.returncode, "code": code, "remote": remote, "body": body, "err": r.stderr.decode(errors="replace")}

    # ---- verification ----------------------------------------------------------
    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        truth = zone_records()
        client_pkts = dns_packets(lab.pcap("client", "eth0"))

        replies = {(rec.header.id, str(rec.q.qname).rstrip(".").lower()): (p, rec) for p, rec, tr in client_pkts
                   if tr == "UDP" and rec.header.qr == 1 and p.src == RESOLVER}
        self._queries = {(rec.header.id, str(rec.q.qname).rstrip(".").lower()): p for p, rec, tr in client_pkts
                         if tr == "UDP" and rec.header.qr == 0 and p.dst == RESOLVER}
        # What the resolver asked upstream while the table was being asked (later steps ask more):
        # (name, type) -> the first such query packet.
        upstream_asked: dict = {}
        for p, rec, tr in dns_packets(lab.pcap("authdns", "eth0")):
            if rec.header.qr == 0 and p.time <= seen["table_done"]:
                upstream_asked.setdefault((str(rec.q.qname).rstrip(".").lower(), _qtype(rec.q.qtype)), p)
        steps: list[Step] = []
        n = 0
        for ri, (row_label, types) in enumerate(ROWS):
            for name, col_label, cells in COLUMNS:
                n += 1
                want = cells[ri]
                st = Step(f"{n}", f"{row_label} x {col_label}: {want}")
                st.cell = (row_label, col_label)
                ok = True
                for t in types:
                    ok &= self._check_cell(st, seen["table"][f"{name} {t}"], name, t, want, truth, replies, upstream_asked)
                st.ok = ok
                steps.append(st)
        steps += self._extra_steps(lab, seen, truth, client_pkts, upstream_asked, len(steps))
        return steps

    def _check_cell(self, st: Step, d: dict, name: str, t: str, want: str, truth, replies, upstream_asked) -> bool:
        got = [(rt, rd) for (o, rt, rd, _) in d["answers"] if rt == t]
        real = truth.get((name, t), set())
        addr = BLOCK_ADDRESS.get(name, "0.0.0.0") if t == "A" else f"::ffff:{BLOCK_ADDRESS.get(name, '0.0.0.0')}"
        if want == BP:
            dig_ok = d["status"] == "NOERROR" and [rd for _, rd in got] == [norm_rdata(t, addr)]
            ttl_ok = all(ttl <= 60 for (_, rt, _, ttl) in d["answers"])
            dig_ok &= ttl_ok
        elif want == REF:
            dig_ok = d["status"] == "REFUSED" and not d["answers"]
        else:
            dig_ok = d["status"] == "NOERROR" and {rd for _, rd in got} == real
        st.see(f"dig {name} {t}: {d['status']} id {d['id']} answer {[rd for _, rd in got] or '-'}"
               + (f" EDE {d['ede']}" if d["ede"] else "") + ("" if dig_ok else f"  <-- wanted {want}"))
        pkt = replies.get((d["id"], name))
        st.attach(self._queries.get((d["id"], name)), label=f"query {name} {t} id {d['id']}")
        cap_ok = False
        if pkt is None:
            st.see(f"  capture client:eth0: no reply id {d['id']} for {name} from {RESOLVER}")
        else:
            _, rec = pkt
            rcode = {0: "NOERROR", 5: "REFUSED"}.get(rec.header.rcode, str(rec.header.rcode))
            answers = [norm_rdata(_qtype(rr.rtype), str(rr.rdata)) for rr in rec.rr if _qtype(rr.rtype) == t]
            if want == BP:
                cap_ok = rcode == "NOERROR" and answers == [norm_rdata(t, addr)]
            elif want == REF:
                cap_ok = rcode == "REFUSED" and not rec.rr
            else:
                cap_ok = rcode == "NOERROR" and set(answers) == real
            st.see(f"  capture client:eth0: {RESOLVER} -> {CLIENT} id {rec.header.id} {rcode} {answers or '-'}", pkt[0],
                   label=f"answer {name} {t} {rcode} {', '.join(answers)}".rstrip())
        asked = (name, t) in upstream_asked
        up_ok = asked == (want == REAL)
        st.see(f"  capture authdns:eth0: resolver {'asked' if asked else 'did not ask'} the upstream for {name} {t}",
               upstream_asked.get((name, t)), label=f"query {name} {t} (upstream)")
        return dig_ok and cap_ok and up_ok

    def _extra_steps(self, lab: Lab, seen: dict, truth, client_pkts, upstream_asked, base: int) -> list[Step]:
        steps = []
        n = base

        def step(text: str) -> Step:
            nonlocal n
            n += 1
            s = Step(str(n), text)
            steps.append(s)
            return s

        # EDE on blocked answers
        s = step("a blocked answer is explained with EDE 15 (Blocked) when the client speaks EDNS")
        d = seen["table"]["malware.bad.example TXT"]
        if "15 (Blocked)" in d["ede"] and "malware" in d["ede"]:
            s.passed(f"dig malware.bad.example TXT: EDE {d['ede']}")
        else:
            s.see(f"dig malware.bad.example TXT: EDE {d['ede']!r}")
        ede_pkts = [p for p, rec, tr in client_pkts if rec.header.qr == 1 and rec.header.id == d["id"]
                    and any(o.code == 15 for rr in rec.ar if rr.rtype == 41 for o in rr.rdata)]
        s.ok = s.ok and bool(ede_pkts)
        s.see(f"capture client:eth0: reply id {d['id']} carries EDNS option 15: {bool(ede_pkts)}", *ede_pkts[:1],
              label="answer malware.bad.example TXT REFUSED, EDE 15 (Blocked)")

        # truncation and TCP on both sides
        s = step("an answer too big for 512 bytes: TC to the client, TCP retry; resolver fell back to TCP upstream")
        d = seen["tcp"]
        want = truth[("big.good.example", "TXT")]
        got = {rd for _, rt, rd, _ in d["answers"] if rt == "TXT"}
        tc = [p for p, rec, tr in client_pkts if tr == "UDP" and rec.header.qr == 1 and rec.header.tc
              and str(rec.q.qname).lower().startswith("big.good.example")]
        tcp_ans = [p for p, rec, tr in client_pkts if tr == "TCP" and rec.header.qr == 1
                   and str(rec.q.qname).lower().startswith("big.good.example")]
        up_tcp = [p for p, rec, tr in dns_packets(lab.pcap("authdns", "eth0")) if tr == "TCP"
                  and str(rec.q.qname).lower().startswith("big.good.example")]
        s.see(f"dig +noedns big.good.example TXT: {'Truncated, retrying in TCP mode' in d['raw']} retried over TCP; "
              f"{len(got)} TXT records")
        s.see(f"capture client:eth0: {len(tc)} UDP reply with TC, {len(tcp_ans)} reply over TCP")
        s.attach(*tc[:1], label="answer big.good.example TXT, TC (truncated)")
        s.attach(*tcp_ans[:1], label="answer big.good.example TXT over TCP")
        s.see(f"capture authdns:eth0: {len(up_tcp)} DNS messages over TCP between resolver and upstream", *up_tcp[:1],
              label="big.good.example TXT over TCP (upstream)")
        s.ok = got == want and bool(tc) and bool(tcp_ans) and bool(up_tcp)

        # device identity
        s = step(f"a device identity (EDNS0 option 65001 = {DEVICE}) selects its own policy: gambling allowed")
        d = seen["device"]
        got = [rd for _, rt, rd, _ in d["answers"] if rt == "A"]
        with_opt = [p for p, rec, tr in client_pkts if rec.header.qr == 0 and rec.header.id == d["id"]
                    and any(o.code == 65001 and bytes(o.data) == DEVICE.encode() for rr in rec.ar if rr.rtype == 41
                            for o in rr.rdata)]
        s.see(f"dig +ednsopt gambling.bad.example A: {d['status']} {got}")
        s.see(f"capture client:eth0: query id {d['id']} carries option 65001 {DEVICE!r}: {bool(with_opt)}", *with_opt[:1],
              label=f"query gambling.bad.example A, EDNS0 65001 {DEVICE}")
        s.attach(replies_by_id(client_pkts, d["id"]), label=f"answer gambling.bad.example A {', '.join(got)}")
        s.ok = d["status"] == "NOERROR" and set(got) == truth[("gambling.bad.example", "A")] and bool(with_opt)

        # not an open resolver
        s = step(f"not an open resolver: a query from an unserved network ({OUTSIDER}) is REFUSED")
        d = seen["outsider"]
        out_both = [(p, rec) for p, rec, tr in dns_packets(lab.pcap("outsider", "eth0")) if rec.header.qr == 1]
        out_pkts = [rec for _, rec in out_both]
        s.see(f"dig from outsider: {d['status']} EDE {d['ede'] or '-'}")
        s.see(f"capture outsider:eth0: {[ {5: 'REFUSED'}.get(r.header.rcode, r.header.rcode) for r in out_pkts]}",
              *[p for p, _ in out_both[:1]], label="answer www.good.example A REFUSED")
        s.ok = d["status"] == "REFUSED" and "Prohibited" in d["ede"] and bool(out_pkts) and all(r.header.rcode == 5 for r in out_pkts)

        # CNAME inspection
        s = step("CNAME inspection: shop.good.example -> listed.bad.example is blocked like the list entry")
        a, txt, mx = seen["cname"]["A"], seen["cname"]["TXT"], seen["cname"]["MX"]
        a_got = [rd for _, rt, rd, _ in a["answers"] if rt == "A"]
        s.see(f"dig shop.good.example A: {a['status']} {a_got}; TXT: {txt['status']}; MX: {mx['status']} "
              f"{[rd for _, rt, rd, _ in mx['answers']]}")
        log = _log_records(lab)
        link = [r for r in log if r.get("name") == "shop.good.example" and r.get("cname")]
        s.attach(replies_by_id(client_pkts, a["id"]), label=f"answer shop.good.example A {', '.join(a_got)}")
        s.attach(replies_by_id(client_pkts, txt["id"]), label="answer shop.good.example TXT REFUSED")
        s.see(f"query log: {link[0]['cname'] if link else 'no cname line'}",
              flow.note("cloud", f"query log: {link[0]['cname']}") if link else None)
        s.ok = (a_got == [BP_LIST] and txt["status"] == "REFUSED" and mx["status"] == "NOERROR"
                and ("listed.bad.example", "MX", "10 mail.listed.bad.example.") in [(o, rt, rd) for o, rt, rd, _ in mx["answers"]]
                and bool(link) and link[0]["cname"] == "shop.good.example -> listed.bad.example")

        # block page, HTTP and HTTPS
        for key, url_name, addr, scheme, reason in (("http", "gambling.bad.example", BP_DEFAULT, "http", "gambling"),
                                                    ("https", "malware.bad.example", BP_SECURITY, "https", "malware"),
                                                    ("https_list", "listed.bad.example", BP_LIST, "https", "lab-block")):
            s = step(f"curl {scheme}://{url_name}/ lands on the block page ({addr}) saying why")
            c = seen[key]
            port = 80 if scheme == "http" else 443
            s.see(f"curl: exit {c['rc']}, HTTP {c['code']} from {c['remote']} {c['err'].strip()[:120]}")
            body_ok = all(w in c["body"] for w in (url_name, reason, "office"))
            s.see(f"page names the site, {reason!r} and policy 'office': {body_ok}")
            pk = _tcp_to(lab.pcap("client", "eth0"), addr, port, url_name.encode())
            s.see(f"capture client:eth0: {CLIENT} -> {addr}:{port} carrying {url_name!r} "
                  f"({'Host header' if scheme == 'http' else 'TLS SNI'}): {pk is not None}", pk,
                  label=f"{'GET, Host' if scheme == 'http' else 'ClientHello SNI'} {url_name}")
            s.ok = c["rc"] == 0 and c["code"] == "403" and c["remote"].startswith(addr) and body_ok and pk is not None

        # query log and stats
        s = step("every query is in the JSON-lines query log; ztna dns stats counts it")
        block_addrs = {norm_rdata(t, a) for a in (BP_DEFAULT, BP_SECURITY, BP_LIST) for t, a in (("A", a), ("AAAA", f"::ffff:{a}"))}
        blocked_digs = sum(1 for d in seen["table"].values()
                           if d["status"] == "REFUSED" or any(rd in block_addrs for _, _, rd, _ in d["answers"]))
        table_names = {f"{name} {t}" for name, _, _ in COLUMNS for _, ts in ROWS for t in ts}
        logged = {f"{r['name']} {r['type']}" for r in log if "name" in r}
        try:
            st = json.loads(seen["stats"])
        except ValueError:
            st = {}
        s.see(f"log: {len(log)} lines; every table query logged: {table_names <= logged}")
        s.see(f"stats: by_decision {st.get('by_decision')}; top blocked {st.get('top_blocked', [])[:3]}")
        blocked_in_log = sum(1 for r in log if r.get("decision") == "blocked" and r.get("time", 0) <= seen["table_done"]
                             and f"{r.get('name')} {r.get('type')}" in table_names)
        s.see(f"blocked table answers: dig {blocked_digs}, log {blocked_in_log}",
              flow.note("cloud", f"query log: {len(log)} lines, {blocked_in_log} blocked table answers",
                        time=seen["table_done"]))
        s.ok = table_names <= logged and blocked_digs == blocked_in_log and st.get("by_decision", {}).get("blocked", 0) >= blocked_digs
        return steps


def _qtype(n: int) -> str:
    from dnslib import QTYPE

    return QTYPE.get(n)


def _log_records(lab: Lab) -> list[dict]:
    return evidence.json_lines(lab.log_dir / "dns-queries.jsonl")


def _tcp_to(path: Path, addr: str, port: int, needle: bytes):
    """The first packet to addr:port whose payload carries ``needle``, or None."""
    from scapy.layers.inet import IP, TCP

    return next((p for p in read(path) if p.haslayer(IP) and p.haslayer(TCP) and p[IP].dst == addr
                 and p[TCP].dport == port and needle in bytes(p[TCP].payload)), None)


def replies_by_id(client_pkts, qid):
    """The client's UDP reply packet with DNS id ``qid``, or None."""
    return next((p for p, rec, tr in client_pkts if tr == "UDP" and rec.header.qr == 1 and rec.header.id == qid), None)


SCENARIOS = [DnsSecurity]
