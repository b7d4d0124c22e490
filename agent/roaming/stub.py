"""The loopback stub: UDP and TCP on the loopback address, and the forwarder
that sends each query where the split-DNS table says.

Internal queries go to the recorded servers, optionally out of the interface
each server was learned from (SO_BINDTODEVICE, the wrong-path fix); external
queries go to the cloud resolver with the device identity in EDNS0 option
65001.  A malformed query gets FORMERR (or is dropped if it has no header);
nothing a client sends stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord

from ztna import dnsclient, edns
from ztna.dnsclient import UpstreamError
from ztna.dnswire import BadMessage, UdpServer, formerr_for, parse_untrusted, serve_tcp_client

from . import split
from .state import Learned
from .status import CloudHealth

log = logging.getLogger("ztna.roaming")

PROBE_SUFFIX = "ztna-probe.invalid"


@dataclass
class Counters:
    """Queries by where they went, for the status page."""

    internal: int = 0
    cloud: int = 0
    fail_open: int = 0
    servfail: int = 0
    formerr: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Forwarder:
    """Decides and performs the forwarding of one query (the stub's brain and hands)."""

    table: split.SplitDNS
    device_id: str
    health: CloudHealth
    fail_open: bool = True
    pin_internal: bool = False  # egress = "learned"
    timeout: float = 1.5
    cloud_port: int = 53
    internal_port: int = 53  # recorded servers come from resolv.conf, which has no port; tests change it
    probe_token: str = ""
    counters: Counters = field(default_factory=Counters)
    on_health: Callable[[], None] = lambda: None

    async def answer_untrusted(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The reply bytes for a query from a local client, or None to drop it."""
        try:
            q = parse_untrusted(data)
        except BadMessage as exc:
            reply = formerr_for(data)
            if reply is not None:
                self.counters.formerr += 1
                log.info("FORMERR to a local client: %s", exc)
            return reply
        if q.header.qr:
            return None
        if len(q.questions) != 1:
            self.counters.formerr += 1
            r = q.reply()
            r.header.rcode = RCODE.FORMERR
            return r.pack()
        qname = str(q.q.qname).rstrip(".").lower()
        if self.probe_token and qname == f"{self.probe_token}.{PROBE_SUFFIX}":
            r = q.reply()
            r.add_answer(RR(q.q.qname, QTYPE.TXT, rdata=TXT(self.probe_token), ttl=0))
            return r.pack()
        client_has_opt = any(rr.rtype == QTYPE.OPT for rr in q.ar)
        route = self.table.route(qname)
        qtype = QTYPE.get(q.q.qtype)
        reply: bytes | None = None
        if route.kind == split.INTERNAL:
            self.counters.internal += 1
            reply = await self._try(route.servers, data, q, tcp=tcp, pin=self.pin_internal, port=self.internal_port,
                                    what=f"{qname} {qtype} -> internal ({route.suffix})")
        else:
            reply = await self._cloud(q, tcp=tcp, qname=qname, qtype=qtype)
        if reply is None:
            self.counters.servfail += 1
            r = q.reply()
            r.header.rcode = RCODE.SERVFAIL
            return r.pack()
        return _for_client(reply, q.header.id, client_has_opt)

    async def _cloud(self, q: DNSRecord, *, tcp: bool, qname: str, qtype: str) -> bytes | None:
        now = time.monotonic()
        if self.health.up or self.health.should_probe(now):
            tagged = DNSRecord.parse(q.pack())
            if self.device_id:
                edns.add_device_id(tagged, self.device_id)
            reply = await self._try(self.table.cloud, tagged.pack(), q, tcp=tcp, pin=False, port=self.cloud_port,
                                    what=f"{qname} {qtype} -> cloud")
            if reply is not None:
                self.counters.cloud += 1
                if self.health.success(time.monotonic()):
                    log.warning("cloud resolver answers again: protected")
                    self.on_health()
                return reply
            if self.health.failure(time.monotonic()):
                log.warning("cloud resolver unreachable (%s): %s", ", ".join(s.value for s in self.table.cloud),
                            "failing open to the recorded servers" if self.fail_open else "fail_open is off: SERVFAIL")
                self.on_health()
        if not self.fail_open:
            return None
        recorded = _recorded(self.table)
        self.counters.fail_open += 1
        return await self._try(recorded, q.pack(), q, tcp=tcp, pin=self.pin_internal, port=self.internal_port,
                               what=f"{qname} {qtype} -> recorded servers (fail-open)")

    async def _try(self, servers, payload: bytes, q: DNSRecord, *, tcp: bool, pin: bool, port: int, what: str) -> bytes | None:
        for s in servers:
            iface = s.iface if pin else ""
            try:
                t0 = time.monotonic()
                ask = dnsclient.query_tcp if tcp else dnsclient.query_udp
                out = await ask(s.value, payload, port=port, iface=iface, timeout=self.timeout)
                log.info("query %s %s%s answered in %.0f ms", what, s.value, f" via {iface}" if iface else "",
                         (time.monotonic() - t0) * 1000)
                return out
            except UpstreamError as exc:
                log.warning("query %s %s%s failed: %s", what, s.value, f" via {iface}" if iface else "",
                            str(exc) or type(exc).__name__)
        return None


def _recorded(table: split.SplitDNS) -> tuple[Learned, ...]:
    seen: dict[str, Learned] = {}
    for servers in table.internal.values():
        for s in servers:
            seen.setdefault(s.value, s)
    return tuple(seen.values())


def _for_client(reply: bytes, ident: int, client_has_opt: bool) -> bytes:
    """The upstream reply as the client must see it: its id, and no OPT it did not ask for."""
    try:
        r = parse_untrusted(reply)
    except BadMessage:
        return reply  # checked before; unreachable in practice
    r.header.id = ident
    if client_has_opt:
        for rr in r.ar:
            if rr.rtype == QTYPE.OPT:
                rr.rdata = [o for o in rr.rdata if getattr(o, "code", None) != edns.DEVICE_ID_OPTION]
    else:
        r.ar = [rr for rr in r.ar if rr.rtype != QTYPE.OPT]
    return r.pack()


class Stub:
    """The listening sockets on the loopback address (UDP and TCP)."""

    def __init__(self, fwd: Forwarder, listen: str, port: int):
        self.fwd, self.listen, self.port = fwd, listen, port
        self.udp = None
        self.tcp: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Bind both sockets; OSError(EADDRINUSE) means another program serves the address."""
        loop = asyncio.get_running_loop()
        # No SO_REUSEPORT: sharing the port would let another proxy take a
        # random share of the queries, which is exactly the clash to detect.
        us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            us.bind((self.listen, self.port))
        except OSError:
            us.close()
            raise
        ts = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            ts.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ts.bind((self.listen, self.port))
            ts.listen(64)
        except OSError:
            us.close()
            ts.close()
            raise
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: UdpServer(lambda data: self.fwd.answer_untrusted(data, tcp=False), log=log), sock=us)
        self.tcp = await asyncio.start_server(self._tcp, sock=ts)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(data: bytes) -> bytes | None:
            return await self.fwd.answer_untrusted(data, tcp=True)

        await serve_tcp_client(reader, writer, answer, log=log)

    def close(self) -> None:
        if self.udp is not None:
            self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


def who_listens(addr: str, port: int) -> str:
    """Best effort: the program holding ``addr:port``/udp, as 'name (pid N)' from ss."""
    import subprocess

    try:
        out = subprocess.run(["ss", "-lunpH", f"sport = :{port}"], capture_output=True, text=True, timeout=3).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].rsplit(":", 1)[0] in (addr, "0.0.0.0", "*"):
            users = line.split("users:", 1)[-1] if "users:" in line else ""
            if users:
                import re

                m = re.search(r'"([^"]+)",pid=(\d+)', users)
                if m:
                    return f"{m.group(1)} (pid {m.group(2)})"
            return "another program"
    return ""
