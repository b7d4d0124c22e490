"""The keys and datagrams of the tunnel's UDP data channel, as a sans-IO core (issue 17).

Theory of operation
-------------------
The mutual-TLS tunnel stays the control channel: identity, leases and policy
never leave it.  It also carries the data channel's key exchange, so only the
two ends of that authenticated TLS connection can hold the keys:

    agent                                              gateway
      UDP_OFFER {epoch, pub: X25519, nonce: 16 B}  --TLS-->
                                               <--TLS--  UDP_ACCEPT {epoch, pub, nonce, session, port}
      both:  shared = X25519(own secret, peer pub)
             okm = HKDF-SHA256(shared, salt = agent nonce || gateway nonce,
                               info = "ztna-udp-1" || session || epoch || agent pub || gateway pub
                                      || agent identity || gateway identity, 64 bytes)
             agent->gateway key = okm[:32], gateway->agent key = okm[32:]

Python's ``ssl`` module cannot export keying material (RFC 5705), so the keys
are bound to the TLS session by where their inputs travel: the X25519 public
values and both nonces are sent only inside that connection, which
authenticated both certificates; a man in the middle of the UDP path sees
neither.  Every offer makes fresh ephemeral keys (forward secrecy per epoch).

A datagram is::

    0x5a | session (4) | epoch (1) | counter (8) | AES-256-GCM(payload) with 16-byte tag

The header is the AEAD's associated data.  The 96-bit nonce is the 4-byte
epoch-and-direction word then the 8-byte counter, under a key used for one
direction of one epoch only, and the counter only grows: no (key, nonce) pair
is ever used twice.  A sender refuses past ``MAX_COUNTER``.  A receiver checks
the counter against a sliding window (RFC 6479: a bitmap of 64-bit blocks,
``WINDOW`` counters wide) before it decrypts and marks it only after the tag
verified, so a forged datagram can neither pass nor poison the window.

Rekeying: the agent offers a new epoch after ``REKEY_AFTER_SECONDS`` or
``REKEY_AFTER_PACKETS``, whichever is first; the receiver keeps the previous
epoch's key until ``OLD_EPOCH_GRACE`` seconds after the new one first
authenticates, so datagrams in flight across a rekey are not lost.

NAT rebinding: :meth:`Channel.receive` reports the source a datagram came
from; the gateway moves the session's peer address there on the first
datagram from a new address that authenticates and is new in the window
(a replayed copy from elsewhere cannot move it).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.exceptions import InvalidTag

MAGIC = 0x5A
HEADER = struct.Struct("!BIBQ")  # magic, session, epoch, counter
TAG = 16
OVERHEAD = HEADER.size + TAG
INFO = b"ztna-udp-1"
NONCE_BYTES = 16
MAX_COUNTER = (1 << 64) - 1
REKEY_AFTER_PACKETS = 1 << 30
REKEY_AFTER_SECONDS = 120.0
OLD_EPOCH_GRACE = 10.0
WINDOW = 2048  # counters the replay window spans (RFC 6479 suggests a few thousand)
_BLOCK = 64
_BLOCKS = WINDOW // _BLOCK + 1  # one spare block, so a slide never clears a counter still in the window

AGENT_TO_GATEWAY, GATEWAY_TO_AGENT = 0, 1


class Rejected(Exception):
    """A datagram that is not ours, or not now: ``why`` names the rule (for a counter)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


# ---- the key exchange (inside the TLS control channel) ---------------------------------------
@dataclass
class Offer:
    """One side's half of an epoch's exchange: its ephemeral X25519 key and nonce."""

    epoch: int
    secret: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate, repr=False)
    nonce: bytes = field(default_factory=lambda: os.urandom(NONCE_BYTES))

    @property
    def public(self) -> bytes:
        return self.secret.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive(own: Offer, peer_public: bytes, peer_nonce: bytes, *, agent_side: bool, session: int,
           agent_identity: str, gateway_identity: str) -> tuple[bytes, bytes]:
    """(send key, receive key) of this side for ``own.epoch``; raises ValueError on a bad peer half."""
    if len(peer_public) != 32 or len(peer_nonce) != NONCE_BYTES:
        raise ValueError("the peer's X25519 key must be 32 bytes and its nonce 16")
    if not 0 <= own.epoch <= 255:
        raise ValueError(f"epoch {own.epoch} is outside 0..255")
    shared = own.secret.exchange(X25519PublicKey.from_public_bytes(peer_public))
    if shared == bytes(32):
        raise ValueError("the peer's X25519 key is a low-order point")
    agent_pub, gw_pub = (own.public, peer_public) if agent_side else (peer_public, own.public)
    agent_nonce, gw_nonce = (own.nonce, peer_nonce) if agent_side else (peer_nonce, own.nonce)
    info = b"".join([INFO, struct.pack("!IB", session, own.epoch), agent_pub, gw_pub,
                     _text(agent_identity), _text(gateway_identity)])
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=agent_nonce + gw_nonce, info=info).derive(shared)
    to_gateway, to_agent = okm[:32], okm[32:]
    return (to_gateway, to_agent) if agent_side else (to_agent, to_gateway)


def _text(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("!H", len(raw)) + raw  # length-prefixed: no two identity pairs give one info


# ---- anti-replay (RFC 6479) --------------------------------------------------------------------
class ReplayWindow:
    """Which counters near the newest one were seen; ``check`` before decrypting, ``mark`` after."""

    def __init__(self) -> None:
        self.top = -1  # the newest counter marked
        self.bits = [0] * _BLOCKS

    def check(self, n: int) -> str | None:
        """None when ``n`` may be new; else why not."""
        if n > self.top:
            return None
        if self.top - n >= WINDOW:
            return "too old"
        block, bit = (n // _BLOCK) % _BLOCKS, n % _BLOCK
        return "replayed" if self.bits[block] >> bit & 1 else None

    def mark(self, n: int) -> None:
        if n > self.top:
            cur = self.top // _BLOCK if self.top >= 0 else -1
            new = n // _BLOCK
            for i in range(min(new - cur, _BLOCKS)):  # the blocks the window slid over start empty
                self.bits[(new - i) % _BLOCKS] = 0
            self.top = n
        self.bits[(n // _BLOCK) % _BLOCKS] |= 1 << (n % _BLOCK)


# ---- one direction of one epoch ----------------------------------------------------------------
class _Sender:
    def __init__(self, key: bytes, session: int, epoch: int, direction: int, now: float):
        self.aead = AESGCM(key)
        self.session, self.epoch = session, epoch
        self.prefix = struct.pack("!BBH", epoch, direction, 0)
        self.counter = 0
        self.started = now

    def seal(self, payload: bytes) -> bytes:
        n = self.counter
        if n >= MAX_COUNTER:
            raise Rejected("counter exhausted: rekey first")
        self.counter = n + 1
        header = HEADER.pack(MAGIC, self.session, self.epoch, n)
        return header + self.aead.encrypt(self.prefix + n.to_bytes(8, "big"), payload, header)


class _Receiver:
    def __init__(self, key: bytes, epoch: int, direction: int):
        self.aead = AESGCM(key)
        self.epoch = epoch
        self.prefix = struct.pack("!BBH", epoch, direction, 0)
        self.window = ReplayWindow()
        self.first_ok: float | None = None

    def open(self, header: bytes, n: int, body: memoryview | bytes) -> bytes:
        why = self.window.check(n)
        if why is not None:
            raise Rejected(why)
        try:
            payload = self.aead.decrypt(self.prefix + n.to_bytes(8, "big"), bytes(body), header)
        except InvalidTag:
            raise Rejected("bad tag") from None
        self.window.mark(n)
        return payload


# ---- a session's data channel ------------------------------------------------------------------
class Channel:
    """One end's data channel: the current and previous epoch's keys, the peer's address.

    ``agent_side`` picks the directions: the agent seals agent->gateway and opens
    gateway->agent.  Time comes in as ``now``; nothing here touches a socket.
    """

    def __init__(self, session: int, *, agent_side: bool):
        self.session = session
        self.agent_side = agent_side
        self.send_dir = AGENT_TO_GATEWAY if agent_side else GATEWAY_TO_AGENT
        self.recv_dir = GATEWAY_TO_AGENT if agent_side else AGENT_TO_GATEWAY
        self.sender: _Sender | None = None
        self.receivers: dict[int, _Receiver] = {}
        self.current = -1
        self.peer: tuple | None = None  # where the last new authenticated datagram came from
        self.rejected: dict[str, int] = {}

    def install(self, epoch: int, send_key: bytes, recv_key: bytes, now: float) -> None:
        """Start using ``epoch``'s keys (after :func:`derive`); the old receive key stays for a grace time."""
        if epoch in self.receivers:
            raise ValueError(f"epoch {epoch} is installed already: a key is never installed twice")
        self.sender = _Sender(send_key, self.session, epoch, self.send_dir, now)
        self.receivers[epoch] = _Receiver(recv_key, epoch, self.recv_dir)
        self.current = epoch
        for old in [e for e in self.receivers if e not in (epoch, self._previous(epoch))]:
            del self.receivers[old]

    @staticmethod
    def _previous(epoch: int) -> int:
        return (epoch - 1) % 256

    def needs_rekey(self, now: float) -> bool:
        s = self.sender
        return s is None or s.counter >= REKEY_AFTER_PACKETS or now - s.started >= REKEY_AFTER_SECONDS

    def seal(self, payload: bytes) -> bytes:
        if self.sender is None:
            raise Rejected("no keys yet")
        return self.sender.seal(payload)

    def receive(self, data: bytes, source: tuple, now: float) -> tuple[bytes, bool]:
        """(payload, moved): ``moved`` when this datagram moved the peer to ``source``. Raises Rejected."""
        try:
            return self._receive(data, source, now)
        except Rejected as exc:
            self.rejected[exc.why] = self.rejected.get(exc.why, 0) + 1
            raise

    def _receive(self, data: bytes, source: tuple, now: float) -> tuple[bytes, bool]:
        if len(data) < OVERHEAD:
            raise Rejected("short")
        magic, session, epoch, n = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise Rejected("not ours")
        if session != self.session:
            raise Rejected("other session")
        rx = self.receivers.get(epoch)
        if rx is None:
            raise Rejected("unknown epoch")
        if epoch != self.current and self._grace_over(now):
            raise Rejected("old epoch")
        view = memoryview(data)
        payload = rx.open(bytes(view[:HEADER.size]), n, view[HEADER.size:])
        if rx.first_ok is None:
            rx.first_ok = now
        moved = source != self.peer and n == rx.window.top  # only the newest datagram moves the peer
        if moved:
            self.peer = source
        return payload, moved

    def receive_many(self, items: list, now: float) -> list:
        """Like :meth:`receive` for each ``(data, source)`` in order, in one call (the hot path): one
        entry per datagram, ``(payload, source, moved)``, or ``(None, why, False)`` for a refused one
        (counted in ``rejected`` by its reason, as :meth:`receive` would)."""
        out: list = []
        unpack, hsize, receivers, current = HEADER.unpack_from, HEADER.size, self.receivers, self.current
        for data, source in items:
            try:
                if len(data) < OVERHEAD:
                    raise Rejected("short")
                magic, session, epoch, n = unpack(data)
                if magic != MAGIC:
                    raise Rejected("not ours")
                if session != self.session:
                    raise Rejected("other session")
                rx = receivers.get(epoch)
                if rx is None:
                    raise Rejected("unknown epoch")
                if epoch != current and self._grace_over(now):
                    raise Rejected("old epoch")
                w = rx.window
                if n <= w.top and w.check(n) is not None:
                    raise Rejected(w.check(n))
                try:
                    payload = rx.aead.decrypt(rx.prefix + n.to_bytes(8, "big"), data[hsize:], data[:hsize])
                except InvalidTag:
                    raise Rejected("bad tag") from None
            except Rejected as exc:
                self.rejected[exc.why] = self.rejected.get(exc.why, 0) + 1
                out.append((None, exc.why, False))
                continue
            w.mark(n)
            if rx.first_ok is None:
                rx.first_ok = now
            moved = source != self.peer and n == w.top
            if moved:
                self.peer = source
            out.append((payload, source, moved))
        return out

    def _grace_over(self, now: float) -> bool:
        cur = self.receivers.get(self.current)
        return cur is not None and cur.first_ok is not None and now - cur.first_ok > OLD_EPOCH_GRACE
