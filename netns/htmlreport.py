"""The HTML report of a scenario run: a sequence picture drawn from the captures.

``render(doc)`` is a pure function of the JSON report (``netns.report.write``):
one lifeline per host in the topology's order, then the steps in their order,
each a PASS or FAIL band followed by one arrow per evidence item it attached
(``netns.flow.Item``), in capture time.  Tunnelled packets sit inside a band
between the tunnel's two ends.  Steps that are cells of a table (``Step.cell``)
are drawn again as that table.  Beside every step: its evidence lines, the pcaps
its packets came from (relative links) and the Wireshark and tcpdump filters
that show those packets.

The page is self-contained (inline SVG and CSS, no script, no font or image from
anywhere) so it opens offline from the run's folder.
"""

from __future__ import annotations

import html
import ipaddress
from dataclasses import dataclass

PASS_COLOUR, FAIL_COLOUR = "#1a7f37", "#cf222e"
ROW, HEAD, TOP = 22, 24, 64
LEFT = 250
LABEL_CHARS = 120
NO_TIME = "\u2013"  # an item without a time (a note read from a file)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class _Places:
    """Which lifeline an address belongs to: the topology's addresses, then the scenario's aliases."""

    exact: dict[str, str]
    nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]

    @classmethod
    def of(cls, doc: dict) -> "_Places":
        exact, nets = {}, []
        for h in doc.get("topology", {}).get("hosts", []):
            for a in h.get("addrs", []):
                exact.setdefault(a.split("/")[0], h["name"])
        for cidr, host in doc.get("aliases", {}).items():
            nets.append((ipaddress.ip_network(cidr, strict=False), host))
        nets.sort(key=lambda nh: -nh[0].prefixlen)
        return cls(exact, nets)

    def host(self, addr: str, fallback: str) -> str:
        if not addr:
            return fallback
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return fallback
        for net, h in self.nets:
            if ip in net and net.prefixlen == net.max_prefixlen:
                return h
        if addr in self.exact:
            return self.exact[addr]
        if ip.is_loopback:
            return fallback
        for net, h in self.nets:
            if ip in net:
                return h
        return fallback


def arrow_ends(it: dict, places: _Places, hosts: list[str]) -> tuple[str, str]:
    """The (from, to) lifelines of one item: its own frm/to, else its addresses, else where it was captured."""
    here = it.get("host") or (hosts[0] if hosts else "")
    if it.get("proto") == "note":
        return here, here
    frm = it.get("frm") or places.host(it.get("src", ""), here)
    to = it.get("to") or places.host(it.get("dst", ""), here)
    return (frm if frm in hosts else here), (to if to in hosts else here)


def tunnel_of(it: dict, ends: tuple[str, str], tunnels: list[dict]) -> dict | None:
    """The tunnel an item travels in, if any (see ``netns.flow.Tunnel``)."""
    for t in tunnels:
        if f"{it.get('host')}:{it.get('iface')}" in t.get("ifaces", []):
            return t
        port = t.get("port")
        if port and set(ends) == set(t["ends"]) and port in (it.get("sport"), it.get("dport")):
            return t
    return None


def endpoint(addr: str, port) -> str:
    return f"{addr}:{port}" if port not in (None, 0, "") else addr


def arrow_label(it: dict) -> str:
    """The text on an arrow: addresses (with ports) and what the packet was."""
    if it.get("proto") == "note":
        return it["summary"]
    if not it.get("src"):
        return it["summary"]
    return f"{endpoint(it['src'], it.get('sport'))} \u2192 {endpoint(it['dst'], it.get('dport'))}  {it['summary']}"


def reason(step: dict) -> str:
    """What a failed step lacked, in a line: the claim not observed, and what was seen instead."""
    seen = [e for e in step.get("evidence", []) if e]
    return ("not observed: " + step["text"] + (" \u2014 seen: " + " | ".join(seen) if seen
                                                 else " \u2014 no evidence found in the captures"))


def wireshark_filter(items: list[dict]) -> str:
    frames = sorted({it["frame"] for it in items if it.get("frame")})
    return "frame.number in {" + " ".join(map(str, frames)) + "}" if frames else ""


def tcpdump_filter(items: list[dict]) -> str:
    """One clause per direction and ports of the step's packets (tcpdump cannot name a frame number)."""
    clauses = []
    for it in items:
        if not it.get("src"):
            continue
        parts = [f"src host {it['src']}", f"dst host {it['dst']}"]
        proto = it.get("proto")
        if proto in ("tcp", "udp"):
            parts.insert(0, proto)
            if it.get("sport"):
                parts.append(f"src port {it['sport']}")
            if it.get("dport"):
                parts.append(f"dst port {it['dport']}")
        elif proto == "icmp":
            parts.insert(0, "icmp")
        c = "(" + " and ".join(parts) + ")"
        if c not in clauses:
            clauses.append(c)
    return " or ".join(clauses)


def _t0(steps: list[dict]) -> float | None:
    times = [it["time"] for s in steps for it in s.get("items", []) if it.get("time") is not None]
    return min(times) if times else None


def _rel(t, t0) -> str:
    return "" if t is None or t0 is None else f"+{t - t0:.3f}s"


def _sorted_items(step: dict) -> list[dict]:
    items = list(step.get("items", []))
    return sorted(items, key=lambda it: (it.get("time") is None, it.get("time") or 0.0))


def diagram(doc: dict) -> str:
    """The sequence picture as inline SVG."""
    hosts = [h["name"] for h in doc.get("topology", {}).get("hosts", [])]
    addrs = {h["name"]: h.get("addrs", []) for h in doc.get("topology", {}).get("hosts", [])}
    places = _Places.of(doc)
    tunnels = doc.get("tunnels", [])
    steps = doc.get("steps", [])
    t0 = _t0(steps)
    gap = 150 if len(hosts) <= 6 else 120
    x = {h: LEFT + 40 + i * gap for i, h in enumerate(hosts)}
    # As wide as the lifelines and the longest arrow label need (11px monospace: about 6.7px a character).
    right = LEFT + 40 + gap * max(len(hosts) - 1, 0) + 60
    for s in steps:
        for it in s.get("items", []):
            frm, to = arrow_ends(it, places, hosts)
            x1, x2 = x.get(frm, LEFT + 40), x.get(to, LEFT + 40)  # (a host the topology lacks: the first lane)
            start = (x1 + 28) if x1 == x2 else min(x1, x2) + 6
            right = max(right, int(start + 6.7 * min(len(arrow_label(it)), LABEL_CHARS)) + 12)
    width = max(right, 720)
    head_chars = (width - 16) // 7
    body: list[str] = []
    bands: list[str] = []
    y = TOP
    for s in steps:
        verdict = "pass" if s.get("ok") else "fail"
        word = "PASS" if s.get("ok") else "FAIL"
        body.append(f'<g class="step {verdict}" data-step="{_e(s["number"])}" data-verdict="{verdict}">'
                    f'<title>{_e(s["text"])}</title>'
                    f'<rect x="0" y="{y}" width="{width}" height="{HEAD}" class="band {verdict}"/>'
                    f'<a href="#step-{_e(s["number"])}"><text x="8" y="{y + 16}" class="stephead">'
                    f'{_e(s["number"])}  {word}  {_e(_clip(s["text"], head_chars))}</text></a></g>')
        y += HEAD
        if not s.get("ok"):
            body.append(f'<text x="24" y="{y + 14}" class="reason" data-step="{_e(s["number"])}">'
                        f'<title>{_e(reason(s))}</title>{_e(_clip(reason(s), head_chars))}</text>')
            y += ROW
        for it in _sorted_items(s):
            frm, to = arrow_ends(it, places, hosts)
            tun = tunnel_of(it, (frm, to), tunnels)
            if tun and all(e in x for e in tun["ends"]):
                xa, xb = sorted(x[e] for e in tun["ends"])
                bands.append(f'<rect class="tunnel" x="{xa}" y="{y}" width="{xb - xa}" height="{ROW}" '
                             f'data-tunnel="{_e(tun["name"])}"><title>{_e(tun["name"])}</title></rect>')
            body.append(_arrow(it, s, verdict, frm, to, x, y, t0, tun))
            y += ROW
        y += 4
    height = y + 40
    heads = []
    for h in hosts:
        first = addrs[h][0].split("/")[0] if addrs[h] else ""
        heads.append(f'<g class="lifeline" data-host="{_e(h)}">'
                     f'<line x1="{x[h]}" y1="{TOP - 10}" x2="{x[h]}" y2="{height - 24}" class="life"/>'
                     f'<rect x="{x[h] - 60}" y="6" width="120" height="40" rx="4" class="host"/>'
                     f'<text x="{x[h]}" y="23" class="hostname">{_e(h)}</text>'
                     f'<text x="{x[h]}" y="39" class="hostaddr">{_e(first)}</text>'
                     f'<text x="{x[h]}" y="{height - 8}" class="hostname">{_e(h)}</text></g>')
    defs = "".join(f'<marker id="head-{v}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                   f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>'
                   for v, c in (("pass", PASS_COLOUR), ("fail", FAIL_COLOUR)))
    return (f'<svg class="sequence" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="sequence of the steps of {_e(doc.get("scenario", ""))}"><defs>{defs}</defs>'
            + "".join(bands) + "".join(heads) + "".join(body) + "</svg>")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _arrow(it: dict, s: dict, verdict: str, frm: str, to: str, x: dict, y: int, t0, tun) -> str:
    mid = y + ROW // 2 + 3
    x1, x2 = x.get(frm, LEFT + 40), x.get(to, LEFT + 40)
    label = arrow_label(it)
    where = f'{it.get("host", "")}:{it.get("iface", "")}' if it.get("iface") else it.get("host", "")
    title = " ".join(p for p in (f"step {s['number']}", _rel(it.get("time"), t0), where,
                                 f"{it.get('pcap')} frame {it.get('frame')}" if it.get("pcap") else "",
                                 f"[{tun['name']}]" if tun else "", label) if p)
    kind = "note" if it.get("proto") == "note" else "packet"
    attrs = (f'class="arrow {verdict} {kind}" data-step="{_e(s["number"])}" data-verdict="{verdict}" '
             f'data-from="{_e(frm)}" data-to="{_e(to)}" data-time="{_e(it.get("time") if it.get("time") is not None else "")}" '
             f'data-pcap="{_e(it.get("pcap", ""))}" data-frame="{_e(it.get("frame") or "")}"'
             + (f' data-tunnel="{_e(tun["name"])}"' if tun else ""))
    if x1 == x2:
        shape = (f'<path d="M{x1},{mid - 6} h22 v10 h-20" class="line {verdict} {kind}" '
                 f'marker-end="url(#head-{verdict})"/>')
        tx = x1 + 28
    else:
        shape = (f'<line x1="{x1}" y1="{mid}" x2="{x2 - 3 if x2 > x1 else x2 + 3}" y2="{mid}" class="line {verdict} {kind}" '
                 f'marker-end="url(#head-{verdict})"/>')
        tx = min(x1, x2) + 6
    return (f'<g {attrs}><title>{_e(title)}</title>'
            f'<text x="8" y="{mid + 1}" class="time">{_e(_rel(it.get("time"), t0) or NO_TIME)}</text>'
            f'<text x="{LEFT - 184}" y="{mid + 1}" class="num">{_e(_clip(s["number"], 13))}</text>'
            f'<text x="{LEFT - 94}" y="{mid + 1}" class="where">{_e(_clip(where, 14))}</text>'
            f'{shape}<text x="{tx}" y="{mid - 4}" class="label">{_e(_clip(label, LABEL_CHARS))}</text></g>')


def grid(doc: dict) -> str:
    """The steps that are table cells (``Step.cell``), as that table; empty when there are none."""
    cells = [s for s in doc.get("steps", []) if s.get("cell")]
    if not cells:
        return ""
    rows = list(dict.fromkeys(s["cell"][0] for s in cells))
    cols = list(dict.fromkeys(s["cell"][1] for s in cells))
    at = {tuple(s["cell"]): s for s in cells}
    rows_name, cols_name = (doc.get("cell_axes") or ["", ""])[:2]
    corner = f"{_e(rows_name)} \u2193 / {_e(cols_name)} \u2192" if rows_name or cols_name else ""
    out = [f'<table class="grid"><thead><tr><th>{corner}</th>'
           + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr></thead><tbody>"]
    for r in rows:
        out.append(f"<tr><th>{_e(r)}</th>")
        for c in cols:
            s = at.get((r, c))
            if s is None:
                out.append("<td></td>")
                continue
            verdict = "pass" if s["ok"] else "fail"
            want = s["text"].rsplit(": ", 1)[-1]
            out.append(f'<td class="cell {verdict}" data-step="{_e(s["number"])}" data-verdict="{verdict}" '
                       f'title="{_e(chr(10).join(s.get("evidence", [])))}"><a href="#step-{_e(s["number"])}">'
                       f'{"PASS" if s["ok"] else "FAIL"}</a><br><span>{_e(want)}</span></td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def step_details(doc: dict, pcaps: dict[str, int] | None = None, pcap_href: str = "pcap") -> str:
    """Beside every step: its evidence lines, its pcaps (linked), its packets and their filters."""
    t0 = _t0(doc.get("steps", []))
    out = ['<table class="steps"><thead><tr><th>step</th><th>verdict</th><th>what and the evidence</th>'
           '<th>captures and filters</th></tr></thead><tbody>']
    for s in doc.get("steps", []):
        verdict = "pass" if s.get("ok") else "fail"
        ev = "".join(f"<li>{_e(e)}</li>" for e in s.get("evidence", [])) or "<li>(no evidence found in the captures)</li>"
        items = _sorted_items(s)
        by_pcap: dict[str, list[dict]] = {}
        for it in items:
            if it.get("pcap"):
                by_pcap.setdefault(it["pcap"], []).append(it)
        caps = []
        for name, its in by_pcap.items():
            size = f" ({pcaps[name]} bytes)" if pcaps and name in pcaps else ""
            href = f"{pcap_href}/{name}"
            caps.append(f'<div class="pcap"><a href="{_e(href)}">{_e(name)}</a>{_e(size)}<br>'
                        f'Wireshark: <code class="ws">{_e(wireshark_filter(its))}</code><br>'
                        f'tcpdump: <code class="td">tcpdump -nr {_e(href)} \'{_e(tcpdump_filter(its))}\'</code></div>')
        pk = "".join(f"<li>{_e(_rel(it.get('time'), t0) or '-')} {_e(it.get('host', ''))}"
                     f"{':' + _e(it['iface']) if it.get('iface') else ''}"
                     f"{' #' + _e(it['frame']) if it.get('frame') else ''}  {_e(arrow_label(it))}</li>" for it in items)
        why = f'<p class="reason">{_e(reason(s))}</p>' if not s.get("ok") else ""
        out.append(f'<tr id="step-{_e(s["number"])}" class="{verdict}"><td>{_e(s["number"])}</td>'
                   f'<td class="verdict {verdict}">{"PASS" if s.get("ok") else "FAIL"}</td>'
                   f'<td><b>{_e(s["text"])}</b>{why}<ul class="evidence">{ev}</ul>'
                   + (f'<ul class="items">{pk}</ul>' if pk else "") + "</td>"
                   f'<td>{"".join(caps) or "(no packet)"}</td></tr>')
    out.append("</tbody></table>")
    return "".join(out)


CSS = f"""
body {{ font-family: sans-serif; margin: 16px; color: #1f2328; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.meta, .legend {{ font-size: 13px; color: #57606a; margin: 4px 0; }}
.legend span {{ display: inline-block; padding: 1px 6px; margin-right: 8px; border-radius: 3px; }}
.legend .pass, td.verdict.pass {{ background: #dafbe1; color: {PASS_COLOUR}; }}
.legend .fail, td.verdict.fail {{ background: #ffebe9; color: {FAIL_COLOUR}; }}
.legend .tun {{ background: #ddf4ff; }}
.scroll {{ overflow-x: auto; border: 1px solid #d0d7de; }}
svg text {{ font-family: monospace; font-size: 11px; }}
svg .label {{ paint-order: stroke; stroke: #ffffff; stroke-width: 3px; stroke-linejoin: round; }}
svg .hostname {{ font-size: 12px; font-weight: bold; text-anchor: middle; font-family: sans-serif; }}
svg .hostaddr {{ text-anchor: middle; fill: #57606a; }}
svg rect.host {{ fill: #f6f8fa; stroke: #8c959f; }}
svg line.life {{ stroke: #8c959f; stroke-dasharray: 4 4; }}
svg rect.band.pass {{ fill: #dafbe1; }}
svg rect.band.fail {{ fill: #ffebe9; }}
svg .stephead {{ font-weight: bold; font-family: sans-serif; font-size: 12px; }}
svg .step.pass .stephead {{ fill: {PASS_COLOUR}; }}
svg .step.fail .stephead {{ fill: {FAIL_COLOUR}; }}
svg .reason {{ fill: {FAIL_COLOUR}; font-style: italic; }}
svg rect.tunnel {{ fill: #ddf4ff; stroke: #54aeff; stroke-width: 0.5; }}
svg .line {{ stroke-width: 1.6; fill: none; }}
svg .line.pass {{ stroke: {PASS_COLOUR}; }}
svg .line.fail {{ stroke: {FAIL_COLOUR}; }}
svg .line.note {{ stroke-dasharray: 2 2; }}
svg .arrow.pass .num {{ fill: {PASS_COLOUR}; font-weight: bold; }}
svg .arrow.fail .num {{ fill: {FAIL_COLOUR}; font-weight: bold; }}
svg .time, svg .where {{ fill: #57606a; }}
table {{ border-collapse: collapse; margin: 12px 0; font-size: 13px; }}
th, td {{ border: 1px solid #d0d7de; padding: 4px 6px; vertical-align: top; text-align: left; }}
table.grid td.cell {{ text-align: center; min-width: 90px; }}
table.grid td.pass {{ background: #dafbe1; }}
table.grid td.fail {{ background: #ffebe9; }}
table.grid td a {{ font-weight: bold; color: inherit; }}
td.pass a, td.pass {{ color: {PASS_COLOUR}; }}
td.fail a, td.fail {{ color: {FAIL_COLOUR}; }}
table.steps ul {{ margin: 4px 0; padding-left: 18px; }}
ul.evidence li, ul.items li {{ font-family: monospace; font-size: 12px; color: #1f2328; }}
ul.items li {{ color: #57606a; }}
p.reason {{ color: {FAIL_COLOUR}; margin: 4px 0; }}
code {{ font-size: 12px; background: #f6f8fa; word-break: break-all; }}
div.pcap {{ margin-bottom: 6px; }}
p.glance a {{ display: inline-block; margin: 0 3px 3px 0; padding: 1px 5px; border-radius: 3px; font-size: 12px;
              text-decoration: none; font-family: monospace; }}
p.glance a.pass {{ background: #dafbe1; color: {PASS_COLOUR}; }}
p.glance a.fail {{ background: #ffebe9; color: {FAIL_COLOUR}; font-weight: bold; }}
"""


def glance(steps: list[dict]) -> str:
    """Every step as a small PASS/FAIL badge linking to its details: the verdicts of a long run in one line."""
    return ('<p class="glance">' + "".join(
        f'<a class="{"pass" if s.get("ok") else "fail"}" href="#step-{_e(s["number"])}" title="{_e(s["text"])}">'
        f'{_e(s["number"])}</a>' for s in steps) + "</p>")


def render(doc: dict, *, pcaps: dict[str, int] | None = None, pcap_href: str = "pcap") -> str:
    """The whole page for one report (``pcaps``: file name -> size of the kept captures, for the links)."""
    steps = doc.get("steps", [])
    n_ok = sum(1 for s in steps if s.get("ok"))
    tunnels = ", ".join(f"{t['name']} ({t['ends'][0]} \u2194 {t['ends'][1]})" for t in doc.get("tunnels", []))
    table = grid(doc)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>ztna lab: {_e(doc.get('scenario', ''))}</title><style>{CSS}</style></head><body>"
        f"<h1>scenario {_e(doc.get('scenario', ''))}: {n_ok}/{len(steps)} steps observed</h1>"
        f"<p class=\"meta\">{_e(doc.get('summary', ''))}</p>"
        f"<p class=\"meta\">run at {_e(doc.get('time', ''))}; drawn from the captures in "
        f"<a href=\"{_e(pcap_href)}/\">{_e(pcap_href)}/</a>; data: <a href=\"report.json\">report.json</a></p>"
        "<p class=\"legend\"><span class=\"pass\">PASS step</span><span class=\"fail\">FAIL step</span>"
        + (f"<span class=\"tun\">tunnel: {_e(tunnels)}</span>" if tunnels else "")
        + "one arrow per packet a step relies on (dotted: a host's own log, file or status); "
        "time from the first packet; hover an arrow for its capture and frame</p>"
        + glance(steps)
        + (f"<h2>Table</h2>{table}" if table else "")
        + f"<h2>Sequence</h2><div class=\"scroll\">{diagram(doc)}</div>"
        + f"<h2>Steps</h2>{step_details(doc, pcaps, pcap_href)}"
        + "</body></html>\n")
