"""A small authoritative DNS server for zone files (UDP and TCP).

The lab uses it as the public DNS server, the private DNS server and the
upstream of the DNS security resolver.  It answers names in its zones
(following CNAMEs inside its own data), NXDOMAIN for unknown names in its
zones, REFUSED outside them, FORMERR for malformed queries, and keeps serving
whatever a client sends.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

import click
from dnslib import QTYPE, RCODE, RR, DNSRecord

from ztna.dnswire import BadMessage, formerr_for, parse_untrusted, serve_tcp_client

log = logging.getLogger("ztna.authdns")


class ZoneError(ValueError):
    """A zone file could not be read; the message names the file and line."""


@dataclass
class ZoneData:
    """Records by (name, type), and the zone apexes they belong to."""

    records: dict[tuple[str, int], list[RR]] = field(default_factory=dict)
    origins: set[str] = field(default_factory=set)

    @classmethod
    def from_text(cls, text: str, origin: str, source: str = "zone") -> "ZoneData":
        z = cls()
        z.add_text(text, origin, source)
        return z

    def add_text(self, text: str, origin: str, source: str = "zone") -> None:
        origin = origin.rstrip(".").lower()
        self.origins.add(origin)
        body = f"$ORIGIN {origin}.\n$TTL 60\n{text}"
        try:
            rrs = RR.fromZone(body)
        except Exception as exc:
            raise ZoneError(f"{source}: cannot parse zone for {origin}: {exc}") from exc
        for rr in rrs:
            key = (str(rr.rname).rstrip(".").lower(), rr.rtype)
            self.records.setdefault(key, []).append(rr)

    def in_zone(self, name: str) -> bool:
        return any(name == o or name.endswith("." + o) for o in self.origins)

    def has_name(self, name: str) -> bool:
        return any(k[0] == name for k in self.records)

    def answer(self, query: DNSRecord) -> DNSRecord:
        """Build the authoritative reply to ``query`` (pure)."""
        reply = query.reply(ra=0, aa=1)
        if len(query.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            reply.header.aa = 0
            return reply
        name = str(query.q.qname).rstrip(".").lower()
        qtype = query.q.qtype
        if not self.in_zone(name):
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
            return reply
        seen = set()
        while (name, qtype) not in self.records and (name, QTYPE.CNAME) in self.records and name not in seen:
            seen.add(name)
            cname = self.records[(name, QTYPE.CNAME)][0]
            reply.add_answer(cname)
            name = str(cname.rdata.label).rstrip(".").lower()
            if not self.in_zone(name):
                return reply  # the resolver follows the alias elsewhere
        rrs = self.records.get((name, qtype), [])
        if qtype == QTYPE.ANY:
            rrs = [rr for (n, _), lst in self.records.items() if n == name for rr in lst]
        for rr in rrs:
            reply.add_answer(rr)
        if not rrs and not self.has_name(name) and not reply.rr:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def load_zone_file(path: Path) -> ZoneData:
    """Read a zone file whose first line is ``$ORIGIN name.``."""
    text = Path(path).read_text()
    first = text.splitlines()[0] if text else ""
    if not first.startswith("$ORIGIN"):
        raise ZoneError(f"{path}: the first line must be '$ORIGIN <zone>.'")
    origin = first.split()[1]
    return ZoneData.from_text("\n".join(text.splitlines()[1:]), origin, str(path))


def respond_untrusted(zone: ZoneData, data: bytes) -> bytes | None:
    """Answer raw query bytes; None means drop (not even a header to answer)."""
    try:
        q = parse_untrusted(data)
    except BadMessage as exc:
        reply = formerr_for(data)
        log.info("%s malformed query: %s", "FORMERR for" if reply else "dropped", exc)
        return reply
    if q.header.qr:
        return None  # never answer answers
    return zone.answer(q).pack()


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, zone: ZoneData):
        self.zone = zone

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        out = respond_untrusted(self.zone, data)
        if out is not None:
            if len(out) > 512:
                q = parse_untrusted(data)
                r = q.reply()
                r.header.tc = 1
                out = r.pack()
            self.transport.sendto(out, addr)


async def _tcp(zone: ZoneData, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def answer(data: bytes) -> bytes | None:
        return respond_untrusted(zone, data)

    await serve_tcp_client(reader, writer, answer)


async def serve(zone: ZoneData, listen: list[str], port: int) -> None:
    loop = asyncio.get_running_loop()
    for addr in listen:
        await loop.create_datagram_endpoint(lambda: _UDP(zone), local_addr=(addr, port))
        await asyncio.start_server(lambda r, w: _tcp(zone, r, w), addr, port)
        log.info("authoritative for %s on %s:%d (udp, tcp)", ", ".join(sorted(zone.origins)), addr, port)
    await asyncio.Event().wait()


@click.group("authdns")
def authdns() -> None:
    """Small authoritative DNS server for zone files."""


@authdns.command("run")
@click.option("--zone", "zones", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Zone file starting with '$ORIGIN name.' (repeatable).")
@click.option("--listen", multiple=True, required=True, help="Address to listen on (repeatable).")
@click.option("--port", default=53, show_default=True)
def run_cmd(zones: tuple[Path, ...], listen: tuple[str, ...], port: int) -> None:
    """Serve the zone files on LISTEN:PORT over UDP and TCP."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    data = ZoneData()
    try:
        for z in zones:
            one = load_zone_file(z)
            for k, v in one.records.items():
                data.records.setdefault(k, []).extend(v)
            data.origins |= one.origins
    except (ZoneError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    asyncio.run(serve(data, list(listen), port))
