"""The HTML report drawn from a small fixed set of packets (netns.flow, netns.htmlreport)."""

import json
import re
from html.parser import HTMLParser

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from netns import capture, evidence, flow, htmlreport
from netns.report import Step, keep_pcaps, write, write_html

TOPO = {"hosts": [{"name": "client", "addrs": ["198.51.100.10/24"]},
                  {"name": "inet", "addrs": ["198.51.100.1/24", "198.51.100.53/24"]},
                  {"name": "gateway", "addrs": ["203.0.113.20/24"]}]}
T0 = 1_700_000_000.0


def pkt(layers, t):
    p = Ether() / layers
    p.time = t
    return p


def captures(tmp_path):
    """client:eth0 sees a DNS exchange, a SYN and the tunnel's first record; client:tun0 the inner SYN."""
    pcaps = tmp_path / "pcap"
    pcaps.mkdir()
    wrpcap(str(pcaps / "client-eth0.pcap"), [
        pkt(IP(src="198.51.100.10", dst="198.51.100.53") / UDP(sport=40000, dport=53)
            / DNS(id=7, rd=1, qd=DNSQR(qname="gateway.example", qtype="A")), T0 + 0.010),
        pkt(IP(src="198.51.100.53", dst="198.51.100.10") / UDP(sport=53, dport=40000)
            / DNS(id=7, qr=1, qd=DNSQR(qname="gateway.example", qtype="A"),
                  an=DNSRR(rrname="gateway.example", type="A", rdata="203.0.113.20")), T0 + 0.012),
        pkt(IP(src="198.51.100.10", dst="203.0.113.20") / TCP(sport=41000, dport=443, flags="S", seq=100), T0 + 0.020),
        pkt(IP(src="198.51.100.10", dst="203.0.113.20") / TCP(sport=41000, dport=443, flags="PA", seq=101)
            / (b"\x17\x03\x03\x00\x05hello"), T0 + 0.040),
    ])
    wrpcap(str(pcaps / "client-tun0.pcap"), [
        pkt(IP(src="100.64.0.1", dst="100.64.0.3") / TCP(sport=42000, dport=443, flags="S"), T0 + 0.030),
    ])
    return pcaps


def steps_from(pcaps):
    up = capture.read(pcaps / "client-eth0.pcap")
    tun = capture.read(pcaps / "client-tun0.pcap")
    msgs, segs = evidence.dns(up), evidence.tcp(up)
    s1 = Step("1", "the client asks public DNS for the gateway")
    q = [m for m in msgs if not m.response]
    a = [m for m in msgs if m.response]
    s1.see("query", q[0]).passed("answer", a[0])
    s2 = Step("2", "the tunnel: SYN to the gateway, the inner SYN, a record")
    s2.passed("SYN", evidence.syns(up, dst="203.0.113.20")[0])
    s2.see("inner SYN", evidence.syns(tun)[0], label="SYN (into the TUN)")
    s2.see("record", flow.first_data(segs, "198.51.100.10", "203.0.113.20"), label="TLS record")
    s3 = Step("3", "the gateway answers the SYN")
    synack = evidence.first_syn(segs, dst="198.51.100.10", dport=41000, synack=True)  # the capture has none
    if synack:
        s3.passed("SYN-ACK", synack)
    else:
        s3.see("no SYN-ACK from 203.0.113.20 on client:eth0")
    s4 = Step("4", "the gateway's log names the identity")
    s4.passed("log line", flow.note("gateway", "log: identity alice", T0 + 0.050))
    return [s1, s2, s3, s4]


def report_doc(tmp_path, steps):
    path = write(tmp_path / "report.json", "fixture", steps, {
        "topology": TOPO, "aliases": {"100.64.0.1/32": "client", "100.64.0.0/10": "gateway"},
        "tunnels": [{"name": "tunnel", "ends": ["client", "gateway"], "ifaces": ["client:tun0"], "port": 443}]})
    return json.loads(path.read_text())


class Arrows(HTMLParser):
    """The arrows, lifelines, step bands and failure reasons of a rendered page."""

    def __init__(self):
        super().__init__()
        self.arrows, self.lifelines, self.bands, self.reasons, self.resources = [], [], [], [], []
        self._in_label = False
        self._in_reason = False
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class", "").split()
        for k in ("src", "href", "xlink:href"):
            if k in a:
                self.resources.append(a[k])
        if tag == "g" and "arrow" in cls:
            self.arrows.append({**a, "label": ""})
        elif tag == "g" and "lifeline" in cls:
            self.lifelines.append(a["data-host"])
        elif tag == "g" and "step" in cls:
            self.bands.append((a["data-step"], a["data-verdict"]))
        elif tag == "title":
            self._in_title = True
        elif tag == "text" and "label" in cls:
            self._in_label = True
        elif tag == "text" and "reason" in cls:
            self._in_reason = True
            self.reasons.append("")

    def handle_endtag(self, tag):
        if tag == "text":
            self._in_label = self._in_reason = False
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            return
        if self._in_label:
            self.arrows[-1]["label"] += data
        if self._in_reason:
            self.reasons[-1] += data


def parsed(page):
    p = Arrows()
    p.feed(page)
    return p


def test_arrows_follow_the_steps_and_the_capture_times(tmp_path):
    pcaps = captures(tmp_path)
    doc = report_doc(tmp_path, steps_from(pcaps))
    page = parsed(htmlreport.render(doc))
    assert page.lifelines == ["client", "inet", "gateway"]
    got = [(a["data-step"], a["data-from"], a["data-to"], a["label"]) for a in page.arrows]
    assert got == [
        ("1", "client", "inet", "198.51.100.10:40000 \u2192 198.51.100.53:53  query gateway.example A"),
        ("1", "inet", "client", "198.51.100.53:53 \u2192 198.51.100.10:40000  answer gateway.example A 203.0.113.20"),
        ("2", "client", "gateway", "198.51.100.10:41000 \u2192 203.0.113.20:443  SYN"),
        # the inner SYN came later than the outer one, and its leased address stands for the gateway side
        ("2", "client", "gateway", "100.64.0.1:42000 \u2192 100.64.0.3:443  SYN (into the TUN)"),
        ("2", "client", "gateway", "198.51.100.10:41000 \u2192 203.0.113.20:443  TLS record"),
        ("4", "gateway", "gateway", "log: identity alice"),
    ]
    assert [a["data-frame"] for a in page.arrows[:3]] == ["1", "2", "3"]
    assert [a["data-pcap"] for a in page.arrows[2:4]] == ["client-eth0.pcap", "client-tun0.pcap"]
    # every packet of step 2 travels in the tunnel: the TUN by its interface, the others by the port between the ends
    assert [a.get("data-tunnel") for a in page.arrows[2:5]] == ["tunnel"] * 3
    assert page.arrows[0].get("data-tunnel") is None


def test_colours_match_the_verdicts_and_a_failed_step_says_what_was_missing(tmp_path):
    doc = report_doc(tmp_path, steps_from(captures(tmp_path)))
    html = htmlreport.render(doc)
    page = parsed(html)
    assert page.bands == [("1", "pass"), ("2", "pass"), ("3", "fail"), ("4", "pass")]
    assert all(a["data-verdict"] == "pass" and "pass" in a["class"].split() for a in page.arrows)
    assert not [a for a in page.arrows if a["data-step"] == "3"]
    assert page.reasons == ["not observed: the gateway answers the SYN \u2014 seen: no SYN-ACK from 203.0.113.20 on client:eth0"]
    row = re.search(r'<tr id="step-3" class="fail">.*?</tr>', html).group(0)
    assert "FAIL" in row and "not observed: the gateway answers the SYN" in row
    assert f'stroke: {htmlreport.FAIL_COLOUR}' in html and f'stroke: {htmlreport.PASS_COLOUR}' in html


def test_each_step_links_its_pcaps_and_gives_filters_for_exactly_its_packets(tmp_path):
    doc = report_doc(tmp_path, steps_from(captures(tmp_path)))
    html = htmlreport.render(doc, pcaps={"client-eth0.pcap": 100, "client-tun0.pcap": 50})
    row = re.search(r'<tr id="step-2" class="pass">.*?</tr>', html).group(0)
    assert '<a href="pcap/client-eth0.pcap">' in row and '<a href="pcap/client-tun0.pcap">' in row
    assert "frame.number in {3 4}" in row  # eth0: the SYN and the record; the tun's own frame separately
    assert "frame.number in {1}" in row
    assert ("tcpdump -nr pcap/client-eth0.pcap '(tcp and src host 198.51.100.10 and dst host 203.0.113.20 "
            "and src port 41000 and dst port 443)'") in row  # one clause: both segments share the flow


def test_the_page_loads_nothing_and_runs_no_script(tmp_path):
    doc = report_doc(tmp_path, steps_from(captures(tmp_path)))
    html = htmlreport.render(doc)
    page = parsed(html)
    assert "<script" not in html and "@import" not in html and "@font-face" not in html
    assert not [r for r in page.resources if re.match(r"\w+:", r) and not r.startswith("#")]
    assert not re.search(r"url\(\s*['\"]?(?!#)", html)


def test_table_cells_are_drawn_as_a_grid_with_their_evidence(tmp_path):
    cells = []
    for i, (row, col, ok) in enumerate([("A", "tunnel", True), ("A", "list", False), ("MX", "tunnel", True)], start=1):
        s = Step(str(i), f"{row} x {col}: {'REFUSED' if row == 'MX' else 'block page'}", ok=ok)
        s.cell = (row, col)
        s.see(f"dig {row} {col}")
        cells.append(s)
    html = htmlreport.render(report_doc(tmp_path, cells))
    grid = re.search(r'<table class="grid">.*?</table>', html).group(0)
    tds = re.findall(r'<td class="cell (\w+)" data-step="(\d+)"[^>]*title="([^"]*)"', grid)
    assert tds == [("pass", "1", "dig A tunnel"), ("fail", "2", "dig A list"), ("pass", "3", "dig MX tunnel")]
    assert grid.count("<td></td>") == 1  # MX x list was not asked


def test_a_kept_run_draws_the_same_page_again(tmp_path):
    pcaps = captures(tmp_path)
    folder = tmp_path / "reports" / "fixture"
    kept = keep_pcaps(pcaps, folder)
    steps = steps_from(kept)
    write(folder / "report.json", "fixture", steps, {"topology": TOPO})
    first = write_html(folder).read_text()
    (pcaps / "client-eth0.pcap").unlink()  # the lab's own folder is laid anew by the next run
    assert write_html(folder).read_text() == first
    assert '<a href="pcap/client-eth0.pcap">client-eth0.pcap</a> (' in first


def test_a_log_line_gives_its_time():
    import time

    want = time.mktime(time.strptime("2026-12-03 13:16:58", "%Y-%m-%d %H:%M:%S")) + 0.123
    assert flow.log_time("2026-12-03 13:16:58,123 gateway INFO session 1") == want
    assert flow.log_time("no time here") is None


def test_the_glance_line_links_every_step_with_its_verdict(tmp_path):
    html = htmlreport.render(report_doc(tmp_path, steps_from(captures(tmp_path))))
    glance = re.search(r'<p class="glance">(.*?)</p>', html).group(1)
    assert re.findall(r'<a class="(\w+)" href="#step-(\w+)"', glance) == [("pass", "1"), ("pass", "2"), ("fail", "3"), ("pass", "4")]


def test_run_open_report_prints_the_page_path_last(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from netns import cli

    report = tmp_path / "reports" / "agent" / "report.json"
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cli, "run_scenario", lambda sc, **kw: (True, [], report))
    res = CliRunner().invoke(cli.lab, ["run", "agent", "--open-report"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[-1] == str(report.with_name("report.html"))


def test_a_report_without_a_topology_still_draws_its_arrows(tmp_path):
    steps = steps_from(captures(tmp_path))
    doc = json.loads(write(tmp_path / "bare.json", "bare", steps).read_text())
    page = parsed(htmlreport.render(doc))
    assert page.lifelines == []
    assert len(page.arrows) == sum(len(s.items) for s in steps)
