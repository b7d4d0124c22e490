"""The PoP's site tunnels: branch and gateway sites' LAN traffic in, the internet out, sans-IO.

Theory of operation
-------------------
A site router (``ztna site run``, backhaul/site.py) dials the PoP's ``site_name``
on 443 with its own client certificate; the certificate's identity must be a
site in the PoP's ``[sites]`` table, which lists the LAN prefixes the site may
send from.  Frames are the agent tunnel's (ztna/wire.py)::

    site                                   PoP
      HELLO {version, site}        ---->   (identity must be that site)
                                   <----   WELCOME {version, site}
      DATA vnet+packet             <--->   DATA vnet+packet
      KEEPALIVE                    <--->   KEEPALIVE
      CLOSE {reason}               <--->   CLOSE {reason}

A packet from a site must come from one of that site's prefixes (anything else
is dropped and counted: a site cannot speak for another's addresses).  The hub
then asks ``decide(site, packet info)`` for the exit; with no network rules the
exit is the PoP's own egress: the packet is written to the PoP's TUN whole (its
virtio-net header included, so a TCP super-packet stays one write), and the
kernel routes it out of the egress interface, where nftables masquerades it to
the egress address (pop/service.py sets that up).  Replies come back through
the TUN, addressed to a site prefix, and go to the site whose prefix holds the
destination (longest prefix).

A flow whose exit is ``backhaul`` (``Exit.site`` names a gateway site, pop/netrules.py
decides) is sent unchanged, the branch user's source address and all, as DATA
into that gateway site's tunnel; the site (``ztna site run`` with ``[backhaul]
gateway = true``) sends it out of its own WAN port.  Its replies come back from
the gateway site's tunnel with an internet source that is none of that site's
LAN prefixes: such a packet is accepted only when it is the reverse of a flow
the hub sent to that very site (the flow table holds the 5-tuple), and is then
delivered to the site whose prefix holds its destination, as replies from the
TUN are.  Anything else from a site still has to come from its own prefixes.
A gateway site reports the WAN port it uses (``port`` in HELLO and KEEPALIVE);
the flow line names it.

One JSON line per flow (protocol, addresses and ports; the first packet from a
site opens it, idleness or the site's end closes it): site, source,
destination, the network rule, the firewall rule, the exit and bytes each way.
The flow table is bounded; past ``max_flows`` packets still pass but are not
logged as flows, and ``flows_untracked`` counts them.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections import Counter
from dataclasses import dataclass, field

from ztna import wire
from ztna.loglimit import LogLimiter, suffix
from ztna.tunnelcmds import Log, WriteTun

from .relay import FlowLog

VNET = wire.VNET_HDR_LEN
POP_EGRESS = "pop-egress"
DROP = "drop"
BACKHAUL = "backhaul"


# ---- commands -------------------------------------------------------------------------
@dataclass(frozen=True)
class SendSite:
    site: int
    data: bytes


@dataclass(frozen=True)
class CloseSite:
    site: int
    reason: str


# ---- what the hub knows ---------------------------------------------------------------
@dataclass(frozen=True)
class SiteDef:
    name: str
    prefixes: tuple  # of ipaddress.IPv4Network


@dataclass(frozen=True)
class Exit:
    """Where a flow leaves: ``kind`` is pop-egress, drop or backhaul (through the gateway site ``site``);
    the rule names go to the flow line."""
    kind: str = POP_EGRESS
    network_rule: str | None = None
    firewall_rule: str | None = None
    site: str | None = None  # kind backhaul: the gateway site whose internet line the flow leaves by


def default_decide(site: str, proto: int, src: str, dst: str, dport: int) -> Exit:
    """No network rules: everything leaves from the PoP's own egress."""
    return Exit()


@dataclass
class SiteLink:
    sid: int
    identity: str
    peer: str
    last_heard: float
    last_sent: float
    state: str = "hello"
    site: SiteDef | None = None
    port: str | None = None  # the WAN port a gateway site says it sends backhauled flows from
    spoofed: int = 0         # packets from outside its LAN not yet logged (logged under bad_log's budget)
    spoofed_src: str = ""
    decoder: wire.Decoder = field(default_factory=wire.Decoder)


@dataclass
class Flow:
    key: tuple  # (proto, src, sport, dst, dport)
    site: str
    exit: Exit
    first: float
    last: float
    bytes_up: int = 0
    bytes_down: int = 0
    port: str | None = None  # backhaul: the gateway site's WAN port when the flow began


def packet_info(pkt) -> tuple[int, str, int, str, int] | None:
    """(proto, src, sport, dst, dport) of an IPv4 packet (ports 0 when it has none), or None."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or len(pkt) < ihl:
        return None
    proto = pkt[9]
    src = ipaddress.IPv4Address(bytes(pkt[12:16])).compressed
    dst = ipaddress.IPv4Address(bytes(pkt[16:20])).compressed
    sport = dport = 0
    frag = struct.unpack_from("!H", pkt, 6)[0] & 0x1FFF
    if proto in (6, 17) and not frag and len(pkt) >= ihl + 4:
        sport, dport = struct.unpack_from("!HH", pkt, ihl)
    return proto, src, sport, dst, dport


class SiteHub:
    def __init__(self, sites: dict[str, SiteDef], *, keepalive: float = 15.0, decide=default_decide,
                 queue_limit: int = 4 * 1024 * 1024, max_flows: int = 65536, flow_idle: float = 60.0):
        self.sites = sites  # certificate identity -> SiteDef
        self.keepalive = keepalive
        self.decide = decide
        self.queue_limit = queue_limit
        self.max_flows = max_flows
        self.flow_idle = flow_idle
        self.links: dict[int, SiteLink] = {}
        self.by_site: dict[str, int] = {}  # site name -> link id of its live tunnel
        self.routes: list[tuple[ipaddress.IPv4Network, str]] = sorted(
            ((p, s.name) for s in sites.values() for p in s.prefixes), key=lambda r: -r[0].prefixlen)
        self.flows: dict[tuple, Flow] = {}
        self.counters: Counter = Counter()
        self.bad_log = LogLimiter(interval=10.0)  # one line per site per 10 s about its spoofed packets

    # ---- a site's tunnel ----------------------------------------------------------------
    def site_up(self, sid: int, identity: str, peer: str, now: float) -> list:
        self.links[sid] = SiteLink(sid, identity, peer, now, now)
        return []

    def site_data(self, sid: int, data: bytes, now: float, queued=lambda sid: 0) -> list:
        link = self.links.get(sid)
        if link is None:
            return []
        link.last_heard = now
        cmds: list = []
        try:
            frames = link.decoder.feed_untrusted(data)
        except wire.BadFrame as exc:
            frames = exc.frames
            bad = str(exc)
        else:
            bad = None
        tun: list = []
        fwd: dict[int, list] = {}  # another site's link id -> DATA frames (backhaul out, replies back)
        for f in frames:
            if f.type == wire.DATA:
                if link.state != "up":
                    self._close(link, "DATA before WELCOME", cmds, tell=True)
                    return cmds
                self._from_site(link, f.payload, now, tun, fwd, queued)
            elif f.type == wire.HELLO:
                self._hello(link, f.fields, now, cmds)
                if link.sid not in self.links:
                    break
            elif f.type == wire.KEEPALIVE:
                if link.state == "up":
                    self._port(link, f.fields, cmds)
            elif f.type == wire.CLOSE:
                self._close(link, f"site said CLOSE: {f.fields.get('reason', '')}", cmds)
                break
            else:
                self._close(link, f"{wire.NAMES.get(f.type, f.type)} has no place in a site tunnel", cmds, tell=True)
                break
        if tun:
            cmds.insert(0, WriteTun(tun))
        if link.spoofed:
            quiet = self.bad_log.allow(("spoofed", link.sid), now)
            if quiet is not None:
                cmds.append(Log(logging.WARNING, f"site {link.site.name}: dropped {link.spoofed} packet(s) from "
                                                 f"outside its LAN (last from {link.spoofed_src}){suffix(quiet)}"))
                link.spoofed = 0
        for other, out in fwd.items():
            if other in self.links:
                self.links[other].last_sent = now
                cmds.insert(0, SendSite(other, b"".join(out)))
        if bad is not None and sid in self.links:
            self.counters["bad_frames"] += 1
            self._close(link, f"bad frame: {bad}", cmds, tell=True)
        return cmds

    def _hello(self, link: SiteLink, fields: dict, now: float, cmds: list) -> None:
        if link.state != "hello":
            self._close(link, "a second HELLO", cmds, tell=True)
            return
        site = self.sites.get(link.identity)
        asked = fields.get("site")
        if site is None:
            self.counters["sites_refused"] += 1
            self._close(link, f"certificate identity {link.identity!r} is not a site of this PoP", cmds, tell=True)
            return
        if asked != site.name:
            self.counters["sites_refused"] += 1
            self._close(link, f"certificate of site {site.name!r} asked to be site {asked!r}", cmds, tell=True)
            return
        if fields.get("version") != wire.VERSION:
            self._close(link, f"unsupported version {fields.get('version')!r}", cmds, tell=True)
            return
        old = self.by_site.get(site.name)
        if old is not None and old in self.links:
            self._close(self.links[old], "replaced by a newer tunnel of the same site", cmds, tell=True)
        link.state, link.site = "up", site
        self.by_site[site.name] = link.sid
        link.last_sent = now
        cmds.append(SendSite(link.sid, wire.control(wire.WELCOME, version=wire.VERSION, site=site.name)))
        cmds.append(Log(logging.INFO, f"site {site.name} up from {link.peer} (LAN "
                                      f"{', '.join(str(p) for p in site.prefixes)})"))
        self._port(link, fields, cmds)

    def _port(self, link: SiteLink, fields: dict, cmds: list) -> None:
        """A gateway site's ``port`` (HELLO, KEEPALIVE): the WAN port its backhauled flows leave by now."""
        port = fields.get("port")
        if port is None or port == link.port:
            return
        if not isinstance(port, str) or not 0 < len(port) <= 16 or not port.isprintable():
            self.counters["bad_port_reports"] += 1
            return
        cmds.append(Log(logging.INFO, f"site {link.site.name}: backhauled flows leave by its port {port}"
                                      + (f" (was {link.port})" if link.port else "")))
        link.port = port

    def _from_site(self, link: SiteLink, payload, now: float, tun: list, fwd: dict, queued) -> None:
        pkt = memoryview(payload)[VNET:]
        info = packet_info(pkt)
        if info is None:
            self.counters["site_packets_not_ipv4"] += 1
            return
        proto, src, sport, dst, dport = info
        # A reply to a flow backhauled through this site: its source is the internet, not the site's LAN.
        rev = self.flows.get((proto, dst, dport, src, sport))
        if rev is not None and rev.exit.kind == BACKHAUL and rev.exit.site == link.site.name:
            self._backhaul_reply(rev, payload, len(pkt), dst, now, fwd, queued)
            return
        addr = ipaddress.IPv4Address(src)
        if not any(addr in p for p in link.site.prefixes):
            self.counters["site_packets_spoofed"] += 1
            link.spoofed, link.spoofed_src = link.spoofed + 1, src
            return
        key = (proto, src, sport, dst, dport)
        fl = self.flows.get(key)
        if fl is None:
            ex = self.decide(link.site.name, proto, src, dst, dport)
            if len(self.flows) < self.max_flows:
                fl = self.flows[key] = Flow(key, link.site.name, ex, now, now)
                if ex.kind == BACKHAUL:
                    gw = self.links.get(self.by_site.get(ex.site, -1))
                    fl.port = gw.port if gw is not None else None
            else:
                self.counters["flows_untracked"] += 1
        else:
            ex = fl.exit
        if fl is not None:
            fl.last = now
            fl.bytes_up += len(pkt)
        if ex.kind == POP_EGRESS:
            self.counters["site_packets_out"] += 1
            tun.append(bytes(payload))
        elif ex.kind == BACKHAUL:
            self._backhaul_out(link, ex.site, payload, fwd, queued)
        else:
            self.counters["site_packets_dropped"] += 1

    def _backhaul_out(self, link: SiteLink, via: str | None, payload, fwd: dict, queued) -> None:
        """A packet of a backhauled flow, unchanged, into the gateway site's tunnel."""
        gw = self.by_site.get(via) if via is not None else None
        if gw is None:
            # The rules core gives a fallback to a flow whose gateway site is down; a flow that began
            # while the site was up keeps its exit, and its packets are dropped until the site is back.
            self.counters["backhaul_site_down"] += 1
            return
        if gw == link.sid:
            self.counters["backhaul_to_itself"] += 1  # a gateway site's own LAN sent back to itself: a loop
            return
        if queued(gw) > self.queue_limit:
            self.counters["site_queue_drops"] += 1
            return
        self.counters["backhaul_packets_out"] += 1
        fwd.setdefault(gw, []).append(wire.data_header(len(payload)) + bytes(payload))

    def _backhaul_reply(self, fl: Flow, payload, size: int, dst: str, now: float, fwd: dict, queued) -> None:
        """A reply from the gateway site, to the site whose prefix holds its destination (the flow's)."""
        fl.last = now
        fl.bytes_down += size
        name = self._site_for(dst)
        sid = self.by_site.get(name) if name else None
        if sid is None:
            self.counters["backhaul_replies_no_site"] += 1
            return
        if queued(sid) > self.queue_limit:
            self.counters["site_queue_drops"] += 1
            return
        self.counters["backhaul_replies_in"] += 1
        fwd.setdefault(sid, []).append(wire.data_header(len(payload)) + bytes(payload))

    # ---- replies through the PoP's TUN --------------------------------------------------
    def tun_packets(self, bufs: list, now: float, queued=lambda sid: 0) -> list:
        out: dict[int, list] = {}
        for buf in bufs:
            pkt = memoryview(buf)[VNET:]
            info = packet_info(pkt)
            if info is None:
                self.counters["tun_packets_not_ipv4"] += 1
                continue
            proto, src, sport, dst, dport = info
            name = self._site_for(dst)
            sid = self.by_site.get(name) if name else None
            if sid is None:
                self.counters["tun_packets_no_site"] += 1
                continue
            fl = self.flows.get((proto, dst, dport, src, sport))
            if fl is not None:
                fl.last = now
                fl.bytes_down += len(pkt)
            if queued(sid) > self.queue_limit:
                self.counters["site_queue_drops"] += 1  # a router drops; the site's TCP backs off
                continue
            out.setdefault(sid, []).append(wire.data_header(len(buf)) + bytes(buf))
        cmds = []
        for sid, frames in out.items():
            self.links[sid].last_sent = now
            cmds.append(SendSite(sid, b"".join(frames)))
        return cmds

    def _site_for(self, dst: str) -> str | None:
        addr = ipaddress.IPv4Address(dst)
        for net, name in self.routes:
            if addr in net:
                return name
        return None

    # ---- ends and time ------------------------------------------------------------------
    def site_closed(self, sid: int, reason: str) -> list:
        link = self.links.get(sid)
        if link is None:
            return []
        cmds: list = []
        self._forget(link, reason, cmds)
        return cmds

    def _close(self, link: SiteLink, reason: str, cmds: list, *, tell: bool = False) -> None:
        if tell:
            cmds.append(SendSite(link.sid, wire.control(wire.CLOSE, reason=reason)))
        cmds.append(CloseSite(link.sid, reason))
        self._forget(link, reason, cmds)

    def _forget(self, link: SiteLink, reason: str, cmds: list) -> None:
        self.links.pop(link.sid, None)
        name = link.site.name if link.site else None
        if name is not None and self.by_site.get(name) == link.sid:
            del self.by_site[name]
            for key, fl in list(self.flows.items()):
                if fl.site == name:
                    self._end_flow(fl, "site tunnel ended", cmds)
        cmds.append(Log(logging.INFO if link.state == "up" else logging.WARNING,
                        f"site {name or link.identity} from {link.peer}: tunnel ended: {reason}"))

    def _end_flow(self, fl: Flow, end: str, cmds: list) -> None:
        self.flows.pop(fl.key, None)
        proto, src, sport, dst, dport = fl.key
        line = {"event": "flow", "site": fl.site, "proto": {6: "tcp", 17: "udp", 1: "icmp"}.get(proto, proto),
                "src": f"{src}:{sport}" if sport else src, "dst": f"{dst}:{dport}" if dport else dst,
                "network_rule": fl.exit.network_rule, "firewall_rule": fl.exit.firewall_rule, "exit": fl.exit.kind}
        if fl.exit.kind == BACKHAUL:
            line["via"], line["port"] = fl.exit.site, fl.port
        elif fl.exit.site is not None:
            line["fallback_of"] = fl.exit.site  # the gateway site was not connected: its fallback applied
        line.update({"bytes_up": fl.bytes_up, "bytes_down": fl.bytes_down, "seconds": round(fl.last - fl.first, 3),
                     "end": end})
        cmds.append(FlowLog(line))

    def tick(self, now: float) -> list:
        cmds: list = []
        for link in list(self.links.values()):
            if now - link.last_heard > 3 * self.keepalive:
                self._close(link, f"no word for {3 * self.keepalive:.0f}s", cmds, tell=True)
            elif link.state == "up" and now - link.last_sent >= self.keepalive:
                link.last_sent = now
                cmds.append(SendSite(link.sid, wire.control(wire.KEEPALIVE)))
        for fl in list(self.flows.values()):
            if now - fl.last > self.flow_idle:
                self._end_flow(fl, "idle", cmds)
        return cmds

    def flush_flows(self, end: str) -> list:
        cmds: list = []
        for fl in list(self.flows.values()):
            self._end_flow(fl, end, cmds)
        return cmds
