"""The structured evidence a step attaches: what the report's sequence picture is drawn from.

A step proves itself with packets it found in the captures (a DNS message, a TCP
segment) and sometimes with something a host said or wrote (a log line, a file,
a status).  Each becomes one :class:`Item`: when, where it was captured, between
which addresses, what it was, and the pcap frame it came from.  The report draws
one arrow per item, so a scenario gets its picture by handing the records it
already checks to ``Step.see``/``Step.passed``; no scenario draws anything.

Records from ``netns.evidence`` know their pcap and frame (``capture.read``
tags every packet), so ``item(rec)`` needs nothing more than the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

_QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
           46: "RRSIG", 65: "HTTPS", 99: "SPF", 255: "ANY", 257: "CAA"}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


@dataclass
class Item:
    """One piece of evidence on the sequence picture: a captured packet, or a note a host gave.

    ``time`` is the capture's (epoch seconds); ``host``/``iface`` say where it was
    captured (or which host the note is about); ``pcap`` is the capture's file name
    in the run's pcap folder and ``frame`` its 1-based frame number there.
    ``frm``/``to`` name the lifelines when the addresses alone would mislead
    (a proxy answering for an address it does not own); left empty, the report
    finds the lifelines from the topology's addresses.
    """

    summary: str
    time: float | None = None
    host: str = ""
    iface: str = ""
    src: str = ""
    dst: str = ""
    sport: int | None = None
    dport: int | None = None
    proto: str = ""  # "udp", "tcp", "icmp", ... or "note" for what is not a packet
    pcap: str = ""
    frame: int | None = None
    frm: str = ""
    to: str = ""

    @property
    def is_packet(self) -> bool:
        return self.proto != "note"


@dataclass
class Tunnel:
    """A tunnel the picture draws as a band between its two ends.

    A packet is tunnelled when it was captured on one of ``ifaces`` (``host:iface``,
    the tunnel's inner side, e.g. a TUN) or when it travels between the two ends on
    ``port`` (the tunnel's own records).
    """

    name: str
    ends: tuple[str, str]
    ifaces: list[str] = field(default_factory=list)
    port: int | None = None


def where(pcap: str | Path) -> tuple[str, str]:
    """(host, iface) from a capture's file name, ``<host>-<iface>.pcap`` (``netns.capture``).  Host names have
    no "-" (netns.topology refuses them); interface names may (``ztna-site0``), so the first "-" divides."""
    host, _, iface = Path(pcap).stem.partition("-")
    return host, iface


def _origin(rec) -> tuple[str, int | None]:
    at = getattr(rec, "at", None) or getattr(rec, "ztna_at", None) or ("", None)
    return at[0], at[1]


def dns_label(m) -> str:
    qtype = _QTYPES.get(m.qtype, str(m.qtype))
    if not m.response:
        return f"query {m.name} {qtype}"
    if m.answers:
        return f"answer {m.name} {qtype} {', '.join(m.answers)}"
    return f"answer {m.name} {qtype} {_RCODES.get(m.rcode, m.rcode)}"


def seg_label(s) -> str:
    flags = set(s.flags)
    if "S" in flags:
        return "SYN-ACK" if "A" in flags else "SYN"
    if "R" in flags:
        return "RST"
    if "F" in flags:
        return "FIN"
    return f"{len(s.payload)} bytes" if s.payload else "ACK"


def item(rec, label: str | None = None, *, frm: str = "", to: str = "") -> Item:
    """The evidence item for one record: a ``netns.evidence`` DnsMsg or Seg, a scapy packet, or an Item."""
    if isinstance(rec, Item):
        if label is not None or frm or to:
            return Item(**{**rec.__dict__, "summary": label or rec.summary, "frm": frm or rec.frm, "to": to or rec.to})
        return rec
    pcap, frame = _origin(rec)
    host, iface = where(pcap) if pcap else ("", "")
    if type(rec).__module__.startswith("scapy"):  # (a scapy packet answers hasattr for its layers' fields too)
        return _from_packet(rec, label, pcap, frame, host, iface, frm, to)
    if hasattr(rec, "qtype"):  # evidence.DnsMsg
        return Item(label or dns_label(rec), rec.time, host, iface, rec.src, rec.dst, getattr(rec, "sport", None),
                    rec.dport, getattr(rec, "proto", "udp"), pcap, frame, frm, to)
    if hasattr(rec, "flags") and hasattr(rec, "seq"):  # evidence.Seg
        return Item(label or seg_label(rec), rec.time, host, iface, rec.src, rec.dst, rec.sport, rec.dport, "tcp",
                    pcap, frame, frm, to)
    raise TypeError(f"no evidence item for a {type(rec).__name__}: pass a DnsMsg, a Seg, a scapy packet or a flow.Item")


def _from_packet(p, label, pcap, frame, host, iface, frm, to) -> Item:
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    if not p.haslayer(IP):
        return Item(label or p.summary(), float(p.time), host, iface, proto="other", pcap=pcap, frame=frame, frm=frm, to=to)
    ip = p[IP]
    l4, proto = (p[TCP], "tcp") if p.haslayer(TCP) else (p[UDP], "udp") if p.haslayer(UDP) else (None, "icmp" if p.haslayer(ICMP) else str(ip.proto))
    return Item(label or p.summary(), float(p.time), host, iface, ip.src, ip.dst, int(l4.sport) if l4 else None,
                int(l4.dport) if l4 else None, proto, pcap, frame, frm, to)


def note(host: str, summary: str, time: float | None = None) -> Item:
    """Evidence that is not a packet (a log line, a file's content, a status) about ``host``."""
    return Item(summary, time, host, proto="note")


def log_time(line: str) -> float | None:
    """The time at the start of a Python log line (logging's default asctime, local time), or None."""
    import time as _time

    try:
        stamp, ms = line[:23].split(",")
        return _time.mktime(_time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
    except ValueError:
        return None


def first_data(segs, src: str, dst: str, *, sport: int | None = None, dport: int | None = None, after: float = 0.0):
    """The first segment with payload from src to dst (the one that carried a hello or a request line)."""
    for s in segs:
        if s.payload and s.src == src and s.dst == dst and s.time >= after and (sport is None or s.sport == sport) \
                and (dport is None or s.dport == dport):
            return s
    return None


def seg_at(segs, t: float | None, src: str, dst: str, *, sport: int | None = None, dport: int | None = None):
    """The segment from src to dst captured at time ``t`` (as ``evidence.time_at`` gave it), or None."""
    if t is None:
        return None
    for s in segs:
        if s.time == t and s.src == src and s.dst == dst and (sport is None or s.sport == sport) \
                and (dport is None or s.dport == dport):
            return s
    return None
