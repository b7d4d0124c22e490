"""Which path the tunnel's data takes, UDP or TLS, as a sans-IO core (issue 17, part 2).

Theory of operation
-------------------
The mutual-TLS connection stays the control channel; ``ztna/datachannel.py``
holds the keys and datagrams.  This module decides when the keys are
exchanged, when the UDP path counts as working and when to leave it.

Agent side (:class:`AgentPath`)::

    off --start--> trying     (DC_OFFER over TLS; on DC_ACCEPT: keys installed, PROBE datagram)
    trying --an authenticated PROBE_REPLY--> up        (DC_PATH {udp: true} over TLS)
    trying --no reply within TRY_TIMEOUT--> fallback   (DATA over TLS; the leases stay)
    up --no authenticated datagram for DEAD_AFTER--> fallback  (DC_PATH {udp: false})
       (while up and quiet for PROBE_EVERY, a PROBE goes out so that silence means loss)
    fallback --REPROBE_AFTER later--> reprobing  (a PROBE)
    reprobing --PROBE_REPLY--> up;  --TRY_TIMEOUT--> fallback

Rekeying: while the path has keys, a new DC_OFFER (next epoch) goes out when
``Channel.needs_rekey`` says so (time or packet count); the old epoch keeps
working until the DC_ACCEPT installs the new one.

Gateway side (:class:`GatewayPath`): answers DC_OFFER with DC_ACCEPT (keys
bound to the TLS session's two identities and session number), answers each
authenticated PROBE with a PROBE_REPLY to the datagram's source, and sends DATA
over UDP only while the agent's last DC_PATH said ``udp: true`` and an
authenticated datagram arrived within DEAD_AFTER.  An authenticated datagram
from a new source moves the peer (NAT rebinding, decided by the channel).

A datagram's plaintext is ``kind (1 byte) | body``: DATA carries one IP
packet (no virtio-net header: packets on UDP are segmented to the path MTU,
ztna/segment.py), DATA_PARTIAL one whose TCP or UDP checksum field holds only
the pseudo-header sum (the receiver's TUN write says NEEDS_CSUM, so nobody sums
the payload in Python; the AEAD tag vouches for the bytes), PROBE and
PROBE_REPLY an 8-byte probe number.  DATA_PARTIAL goes only to a peer that said
it takes it (``partial: true`` in its DC_OFFER or DC_ACCEPT); to any other, DATA.  Anything that
does not authenticate, or has an unknown kind, is dropped and counted in
``counters`` (``udp_rejected_<why>``) and never changes the state.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections import Counter
from dataclasses import dataclass

from ztna import datachannel as dc
from ztna import wire
from ztna.segment import F_NEEDS_CSUM, TooBig, cut, partial_ok, segment, vnet_for
from ztna.segment import VNET as _VNET

OFF, TRYING, UP, FALLBACK, REPROBING = "off", "trying", "up", "fallback", "reprobing"

TRY_TIMEOUT = 1.0      # seconds a probe may go unanswered before the data goes over TLS
DEAD_AFTER = 3.0       # seconds without an authenticated datagram before a working path counts as lost
PROBE_EVERY = 1.0      # while up and quiet this long, probe (so that silence means loss)
REPROBE_AFTER = 15.0   # seconds in fallback before the next probe

KIND_DATA, KIND_PROBE, KIND_PROBE_REPLY, KIND_DATA_PARTIAL = 0, 1, 2, 3
_KINDS = (KIND_DATA, KIND_PROBE, KIND_PROBE_REPLY, KIND_DATA_PARTIAL)
VNET_LEN = _VNET.size
_DATA_BYTE, _PARTIAL_BYTE = bytes([KIND_DATA]), bytes([KIND_DATA_PARTIAL])
_PROBE = struct.Struct("!BQ")


@dataclass(frozen=True)
class SendControl:
    """Write this control frame to the tunnel's TLS connection."""
    data: bytes


@dataclass(frozen=True)
class SendDatagram:
    """Send this datagram on the UDP socket; ``to`` None means the agent's gateway address."""
    data: bytes
    to: tuple | None = None


@dataclass(frozen=True)
class SendDatagrams:
    """Send each of these datagrams (a burst of data) on the UDP socket, like :class:`SendDatagram`."""
    datagrams: list
    to: tuple | None = None


@dataclass(frozen=True)
class Received:
    """What one datagram was: ``packet`` an inner IP packet to write to the TUN, or None;
    ``partial``: its L4 checksum field holds the pseudo-header sum (ztna.segment.vnet_for)."""
    packet: bytes | None
    moved: bool = False
    partial: bool = False


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text, size: int) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {exc}") from None
    if len(raw) != size:
        raise ValueError(f"{len(raw)} bytes, not {size}")
    return raw


def _epoch(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise ValueError(f"epoch {value!r} is not 0..255")
    return value


def session_of(data: bytes) -> int | None:
    """The session number in a datagram's header (to find its channel), or None if it is not ours."""
    if len(data) < dc.OVERHEAD or data[0] != dc.MAGIC:
        return None
    return dc.HEADER.unpack_from(data)[1]


class _Path:
    def __init__(self) -> None:
        self.channel: dc.Channel | None = None
        self.counters: Counter = Counter()
        self.last_udp_rx: float | None = None
        self.peer_partial = False  # the peer takes DATA_PARTIAL

    def receive_many(self, items: list, now: float) -> tuple[list, list, list, list]:
        """Datagrams from the UDP socket, each ``(data, source)``, in order (the hot path):
        ``(commands, TUN buffers, sources that moved the peer, sources of the refused ones)``.  A TUN
        buffer is a DATA packet with its virtio-net header (ztna.segment.vnet_for); the caller
        still checks that it is IPv4.  A refused datagram is counted (``udp_rejected_<why>``)."""
        c = self.counters
        if self.channel is None:
            c["udp_rejected_no_keys_yet"] += len(items)
            return [], [], [], [src for _, src in items]
        cmds: list = []
        bufs: list = []
        moved_to: list = []
        refused: list = []
        rx = 0
        for (_, source), (payload, why, moved) in zip(items, self.channel.receive_many(items, now)):
            if payload is None:
                c["udp_rejected_" + why.replace(" ", "_")] += 1
                refused.append(source)
                continue
            kind = payload[0] if payload else -1
            if kind == KIND_DATA_PARTIAL:
                body = payload[1:]
                if not partial_ok(body):
                    c["udp_rejected_bad_partial"] += 1
                    refused.append(source)
                    continue
                bufs.append(vnet_for(body, True))
            elif kind == KIND_DATA:
                bufs.append(vnet_for(payload[1:], False))
            elif (kind == KIND_PROBE or kind == KIND_PROBE_REPLY) and len(payload) == _PROBE.size:
                cmds += self._probe_kind(kind, payload[1:], source, now)
            else:
                c["udp_rejected_bad_kind"] += 1
                refused.append(source)
                continue
            rx += 1
            if moved:
                moved_to.append(source)
        if rx:
            c["udp_rx"] += rx
            self.last_udp_rx = now
        return cmds, bufs, moved_to, refused

    def _probe_kind(self, kind: int, body: bytes, source: tuple, now: float) -> list:
        return []

    def datagram(self, data: bytes, source: tuple, now: float) -> tuple[list, Received]:
        """One datagram from the UDP socket: (commands, what it carried)."""
        cmds, bufs, moved, _ = self.receive_many([(data, source)], now)
        if not bufs:
            return cmds, Received(None, bool(moved))
        return cmds, Received(bytes(bufs[0][VNET_LEN:]), bool(moved), bool(bufs[0][0] & F_NEEDS_CSUM))

    def seal_data(self, packet: bytes, partial: bool = False) -> bytes:
        """One inner packet (already at most the path MTU) as a datagram; ``partial``: its L4 checksum
        is the pseudo-header sum (only for a peer that takes DATA_PARTIAL)."""
        self.counters["udp_tx"] += 1
        return self.channel.seal((_PARTIAL_BYTE if partial else _DATA_BYTE) + packet)

    def seal_packets(self, packets: list, mtu: int) -> tuple[list, list]:
        """(datagrams, packets left for TLS): each packet cut to ``mtu`` (ztna/segment.py) and sealed;
        one that cannot be cut (a non-TCP packet over the MTU) is left for the TLS path."""
        dgs: list = []
        rest: list = []
        fast = self.peer_partial
        seal = self.channel.seal
        for buf in packets:
            try:
                pieces, partial = cut(buf, mtu) if fast else (segment(buf, mtu), False)
            except TooBig:
                rest.append(buf)
                continue
            kind = _PARTIAL_BYTE if partial else _DATA_BYTE
            for p in pieces:
                dgs.append(seal(kind + p))
        self.counters["udp_tx"] += len(dgs)
        return dgs, rest


class AgentPath(_Path):
    """The agent's view of the UDP path of one tunnel (see the module docstring)."""

    def __init__(self, *, agent_identity: str = "", gateway_identity: str = "") -> None:
        super().__init__()
        self.state = OFF
        self.changed = 0.0
        self.agent_identity, self.gateway_identity = agent_identity, gateway_identity
        self.offer: dc.Offer | None = None  # the offer waiting for its DC_ACCEPT
        self.epoch = -1
        self.port: int | None = None
        self.probe_no = 0
        self.probe_sent: float | None = None
        self.next_probe = 0.0
        self.switches: list[tuple[float, str]] = []  # (when, new state) for up/fallback changes

    def _set(self, state: str, now: float) -> None:
        self.state = state
        self.changed = now
        if state in (UP, FALLBACK):
            self.switches.append((now, state))

    @property
    def udp(self) -> bool:
        """Whether DATA goes over UDP now."""
        return self.state == UP

    def start(self, now: float, *, gateway_identity: str | None = None) -> list:
        """The tunnel is up (WELCOME received): offer the first epoch's keys."""
        if gateway_identity is not None:
            self.gateway_identity = gateway_identity
        self._set(TRYING, now)
        self.probe_sent = now  # the try's clock starts with the offer: no answer at all is a failure too
        return self._offer(now)

    def _offer(self, now: float) -> list:
        self.offer = dc.Offer((self.epoch + 1) % 256)
        return [SendControl(wire.control(wire.DC_OFFER, epoch=self.offer.epoch, pub=_b64(self.offer.public),
                                         nonce=_b64(self.offer.nonce), partial=True))]

    def accepted(self, fields: dict, now: float) -> list:
        """A DC_ACCEPT from the gateway. Raises ValueError on one that does not fit our offer."""
        offer = self.offer
        if offer is None or _epoch(fields.get("epoch")) != offer.epoch:
            raise ValueError("DC_ACCEPT without a matching DC_OFFER")
        session, port = fields.get("session"), fields.get("port")
        if not isinstance(session, int) or isinstance(session, bool) or not 0 <= session < 1 << 32:
            raise ValueError(f"session {session!r} is not a 32-bit number")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"port {port!r} is not a UDP port")
        send, recv = dc.derive(offer, _unb64(fields.get("pub"), 32), _unb64(fields.get("nonce"), dc.NONCE_BYTES),
                               agent_side=True, session=session, agent_identity=self.agent_identity,
                               gateway_identity=self.gateway_identity)
        if self.channel is None or self.channel.session != session:
            self.channel = dc.Channel(session, agent_side=True)
        self.channel.install(offer.epoch, send, recv, now)
        self.epoch, self.port, self.offer = offer.epoch, port, None
        self.peer_partial = fields.get("partial") is True
        self.counters["udp_epochs"] += 1
        if self.state in (TRYING, REPROBING):
            return self._probe(now)
        return []

    def _probe(self, now: float) -> list:
        self.probe_no += 1
        self.probe_sent = now
        self.counters["udp_probes"] += 1
        return [SendDatagram(self.channel.seal(_PROBE.pack(KIND_PROBE, self.probe_no)))]

    def _probe_kind(self, kind: int, body: bytes, source: tuple, now: float) -> list:
        if kind == KIND_PROBE_REPLY and self.state != UP:
            self._set(UP, now)
            return [SendControl(wire.control(wire.DC_PATH, udp=True))]
        return []

    def tick(self, now: float) -> list:
        cmds: list = []
        st = self.state
        if st == OFF:
            return cmds
        if st in (TRYING, REPROBING) and self.probe_sent is not None and now - self.probe_sent >= TRY_TIMEOUT:
            # the gateway was never told ``udp: true`` since the path was last lost: nothing to undo
            self._set(FALLBACK, now)
            self.next_probe = now + REPROBE_AFTER
            self.counters["udp_fallbacks"] += 1
        elif st == UP:
            quiet = now - (self.last_udp_rx if self.last_udp_rx is not None else self.changed)
            if quiet >= DEAD_AFTER:
                self._set(FALLBACK, now)
                self.next_probe = now + REPROBE_AFTER
                self.counters["udp_fallbacks"] += 1
                cmds.append(SendControl(wire.control(wire.DC_PATH, udp=False)))
            elif quiet >= PROBE_EVERY and (self.probe_sent is None or now - self.probe_sent >= PROBE_EVERY):
                cmds += self._probe(now)
        elif st == FALLBACK and now >= self.next_probe:
            if self.channel is not None and self.channel.sender is not None:
                self._set(REPROBING, now)
                cmds += self._probe(now)
            else:  # the keys never came: offer again
                self._set(TRYING, now)
                self.probe_sent = now
                cmds += self._offer(now)
        if self.offer is None and self.channel is not None and self.channel.sender is not None \
                and self.channel.needs_rekey(now):
            self.counters["udp_rekeys"] += 1
            cmds += self._offer(now)
        return cmds

    def stop(self) -> None:
        """The tunnel went down: the keys go with it."""
        self.state, self.channel, self.offer, self.epoch = OFF, None, None, -1


class GatewayPath(_Path):
    """The gateway's view of one session's UDP path."""

    def __init__(self, session: int, *, port: int, agent_identity: str, gateway_identity: str) -> None:
        super().__init__()
        self.session, self.port = session, port
        self.agent_identity, self.gateway_identity = agent_identity, gateway_identity
        self.channel = dc.Channel(session, agent_side=False)
        self.agent_says_udp = False

    def offered(self, fields: dict, now: float) -> list:
        """A DC_OFFER from the agent: install the epoch's keys, answer DC_ACCEPT. Raises ValueError."""
        epoch = _epoch(fields.get("epoch"))
        pub, nonce = _unb64(fields.get("pub"), 32), _unb64(fields.get("nonce"), dc.NONCE_BYTES)
        if epoch in self.channel.receivers:
            raise ValueError(f"epoch {epoch} was offered already")
        own = dc.Offer(epoch)
        send, recv = dc.derive(own, pub, nonce, agent_side=False, session=self.session,
                               agent_identity=self.agent_identity, gateway_identity=self.gateway_identity)
        self.channel.install(epoch, send, recv, now)
        self.counters["udp_epochs"] += 1
        self.peer_partial = fields.get("partial") is True
        return [SendControl(wire.control(wire.DC_ACCEPT, epoch=epoch, pub=_b64(own.public), nonce=_b64(own.nonce),
                                         session=self.session, port=self.port, partial=True))]

    def path(self, fields: dict) -> None:
        """A DC_PATH from the agent."""
        self.agent_says_udp = fields.get("udp") is True

    def udp(self, now: float) -> bool:
        """Whether DATA to the agent goes over UDP now."""
        return (self.agent_says_udp and self.channel.peer is not None and self.channel.sender is not None
                and self.last_udp_rx is not None and now - self.last_udp_rx < DEAD_AFTER)

    def receive_many(self, items: list, now: float) -> tuple[list, list, list, list]:
        got = super().receive_many(items, now)
        if got[2]:
            self.counters["udp_peer_moves"] += len(got[2])
        return got

    def _probe_kind(self, kind: int, body: bytes, source: tuple, now: float) -> list:
        if kind == KIND_PROBE:
            (n,) = struct.unpack("!Q", body)
            return [SendDatagram(self.channel.seal(_PROBE.pack(KIND_PROBE_REPLY, n)), source)]
        return []
