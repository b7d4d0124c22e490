"""Reading the captures back: the facts a step's evidence is made of.

Every function takes scapy packets (``netns.capture.read``) and returns plain
records, so a scenario's checks read like the steps they prove.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from scapy.layers.dns import DNS
from scapy.layers.inet import IP, TCP, UDP
from scapy.main import load_layer

load_layer("tls")


@dataclass
class DnsMsg:
    """One DNS message seen on the wire (port 53, UDP or TCP)."""

    time: float
    src: str
    dst: str
    name: str
    qtype: int
    response: bool
    answers: list[str]  # A and AAAA addresses of the answer section
    rcode: int
    dport: int = 53
    opts: list[tuple[int, bytes]] = field(default_factory=list)  # EDNS0 options (code, data)
    sport: int = 0
    proto: str = "udp"
    at: tuple = ()  # (pcap file name, frame number), from capture.read
    raw: bytes = b""  # the DNS message itself (over TCP without its length prefix)
    cnames: list[str] = field(default_factory=list)  # CNAME targets of the answer section

    @property
    def a(self) -> list[str]:
        """The IPv4 addresses of the answer section."""
        return [x for x in self.answers if ":" not in x]

    @property
    def record(self):
        """The whole message as dnslib reads it (every record type, EDNS options), or None if it cannot."""
        from dnslib import DNSRecord

        try:
            return DNSRecord.parse(self.raw) if len(self.raw) >= 12 else None
        except Exception:  # a capture may hold any bytes on port 53
            return None


def dns(pkts) -> list[DnsMsg]:
    """Every DNS message; a record scapy cannot dissect ends that message's answers, never the reading."""
    out = []
    for p in pkts:
        if not (p.haslayer(IP) and p.haslayer(DNS)):
            continue
        l4 = p[UDP] if p.haslayer(UDP) else p[TCP] if p.haslayer(TCP) else None
        if l4 is None or 53 not in (l4.sport, l4.dport):
            continue
        d = p[DNS]
        try:
            q = d.qd[0] if hasattr(d.qd, "__getitem__") else d.qd
            name, qtype = q.qname.decode().rstrip(".").lower(), int(q.qtype)
        except Exception:  # no question, or one scapy could not dissect
            name, qtype = "", 0
        answers, cnames = [], []
        for i in range(d.ancount or 0):
            try:
                rr = d.an[i]
            except Exception:
                break
            if rr.type in (1, 28):
                answers.append(str(rr.rdata))
            elif rr.type == 5:
                target = rr.rdata
                cnames.append((target.decode() if isinstance(target, bytes) else str(target)).rstrip(".").lower())
        opts = []
        for rr in (d.ar or []) if d.arcount else []:
            if getattr(rr, "type", None) == 41:
                # scapy gives some options (EDE) a class of their own without optdata
                opts += [(o.optcode, bytes(getattr(o, "optdata", b"") or b"")) for o in getattr(rr, "rdata", [])
                         if hasattr(o, "optcode")]
        raw = bytes(l4.payload)
        out.append(DnsMsg(float(p.time), p[IP].src, p[IP].dst, name, qtype, bool(d.qr), answers, d.rcode,
                          int(l4.dport), opts, int(l4.sport), "udp" if p.haslayer(UDP) else "tcp",
                          getattr(p, "ztna_at", ()), raw[2:] if p.haslayer(TCP) else raw, cnames))
    return out


@dataclass
class Seg:
    """One TCP segment."""

    time: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: str
    seq: int
    payload: bytes
    at: tuple = ()  # (pcap file name, frame number), from capture.read


def tcp(pkts) -> list[Seg]:
    return [Seg(float(p.time), p[IP].src, int(p[TCP].sport), p[IP].dst, int(p[TCP].dport), str(p[TCP].flags),
                int(p[TCP].seq), bytes(p[TCP].payload), getattr(p, "ztna_at", ()))
            for p in pkts if p.haslayer(IP) and p.haslayer(TCP)]


def syns(pkts, dst: str | None = None, dport: int | None = None) -> list[Seg]:
    return [s for s in tcp(pkts) if s.flags == "S" and (dst is None or s.dst == dst) and (dport is None or s.dport == dport)]


def in_net(addr: str, net: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(net)


def touching(pkts, net: str) -> list:
    """Packets whose source or destination lies in ``net``."""
    return [p for p in pkts if p.haslayer(IP) and (in_net(p[IP].src, net) or in_net(p[IP].dst, net))]


def tls(stream: bytes) -> dict:
    """What the TLS records at the start of one side's byte stream show (scapy's TLS dissector).

    Keys: ``types`` (content type of each record), ``sni``, ``offered`` (the
    ClientHello's highest supported version) and ``selected`` (the ServerHello's).
    """
    from scapy.layers.tls.handshake import TLSClientHello, TLSServerHello
    from scapy.layers.tls.record import TLS

    names = {0x0304: "TLSv1.3", 0x0303: "TLSv1.2", 0x0302: "TLSv1.1", 0x0301: "TLSv1.0"}
    out: dict = {"types": [], "sni": None, "offered": None, "selected": None}
    try:
        rec = TLS(stream)
    except Exception:
        return out
    while isinstance(rec, TLS):
        out["types"].append(rec.type)
        for m in rec.msg if isinstance(rec.msg, list) else []:
            exts = getattr(m, "ext", None) or []
            if isinstance(m, TLSClientHello):
                for e in exts:
                    if type(e).__name__ == "TLS_Ext_ServerName" and e.servernames:
                        out["sni"] = e.servernames[0].servername.decode(errors="replace")
                    if type(e).__name__ == "TLS_Ext_SupportedVersion_CH":
                        out["offered"] = names.get(max(e.versions), hex(max(e.versions)))
            if isinstance(m, TLSServerHello):
                out["selected"] = names.get(m.version, hex(m.version))
                for e in exts:
                    if type(e).__name__ == "TLS_Ext_SupportedVersion_SH":
                        out["selected"] = names.get(e.version, hex(e.version))
        rec = rec.payload
    return out


def reassemble(segs: list[Seg], src: str, sport: int | None, dst: str, dport: int | None) -> tuple[bytes, list[tuple[float, int]]]:
    """One direction's payload put together by sequence number, and (time, offset) of each new segment.

    Retransmissions add nothing; a hole (a segment the capture missed) ends the stream there.
    """
    chosen = [s for s in segs if s.src == src and s.dst == dst and (sport is None or s.sport == sport)
              and (dport is None or s.dport == dport)]
    syn = next((s for s in chosen if "S" in s.flags), None)
    base = syn.seq + 1 if syn is not None else min((s.seq for s in chosen if s.payload), default=0)
    data = bytearray()
    times = []
    for s in sorted((s for s in chosen if s.payload), key=lambda s: (s.seq - base) % 2**32):
        off = (s.seq - base) % 2**32
        if off > len(data):
            break
        if off + len(s.payload) > len(data):
            times.append((s.time, len(data)))
            data += s.payload[len(data) - off:]
    return bytes(data), times


def stream(segs: list[Seg], src: str, dst: str, *, dport: int | None = None, sport: int | None = None) -> bytes:
    """The bytes one side of one connection sent (see ``reassemble``)."""
    return reassemble(segs, src, sport, dst, dport)[0]


@dataclass
class Uplink:
    """What one host's uplink capture shows: its TLS connections to ``server``:443 and anything else."""
    syns: list           # SYNs from ``src`` to server:443
    snis: list           # the ClientHello SNI of each of them
    stray: dict          # net or host -> how many packets touch it (each should be 0)

    def only_tls(self, sni: str) -> bool:
        """At least one TLS connection to the server, every ClientHello naming ``sni``, nothing stray."""
        return bool(self.syns) and all(n == sni for n in self.snis) and not any(self.stray.values())

    def summary(self) -> str:
        stray = ", ".join(f"{n} {k}" for k, n in self.stray.items())
        return f"{len(self.syns)} SYN(s) to the server, SNIs {sorted(set(map(str, self.snis)))}; packets touching {stray}"


def uplink(pkts, src: str, server: str, *, nets: tuple = (), hosts: tuple = (), until: float = float("inf")) -> Uplink:
    """Check a client's uplink: its connections to ``server``:443 with their SNIs, and how many packets
    (captured before ``until``) touch each of ``nets`` (CIDRs) or ``hosts`` (addresses); the tunnel
    should be all the uplink carries."""
    segs = tcp(pkts)
    syn = [s for s in segs if s.flags == "S" and s.src == src and s.dst == server and s.dport == 443]
    snis = [tls(stream(segs, src, server, sport=s.sport, dport=443)).get("sni") for s in syn]
    stray: dict = {}
    for net in nets:
        stray[net] = sum(1 for p in touching(pkts, net) if float(p.time) < until)
    for host in hosts:
        stray[host] = sum(1 for s in segs if host in (s.src, s.dst) and s.time < until)
    return Uplink(syn, snis, stray)


def time_at(times: list[tuple[float, int]], offset: int) -> float:
    """When the byte at ``offset`` of a reassembled stream was captured."""
    best = times[0][0] if times else 0.0
    for t, off in times:
        if off <= offset:
            best = t
    return best


def first_syn(segs: list[Seg], *, src: str | None = None, dst: str, dport: int, after: float = 0.0,
              synack: bool = False) -> Seg | None:
    """The first SYN (or SYN-ACK) to dst:dport at or after ``after``."""
    for s in segs:
        is_syn = "S" in s.flags and (("A" in s.flags) == synack)
        if is_syn and s.dst == dst and s.dport == dport and s.time >= after and (src is None or s.src == src):
            return s
    return None


def json_lines(path) -> list[dict]:
    """The JSON objects of a log file that holds one per line (other lines, and a torn last line, skipped)."""
    import json
    from pathlib import Path

    path = Path(path)
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
