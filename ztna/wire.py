"""The tunnel's wire protocol: length-prefixed frames inside TLS 1.3.

Theory of operation
-------------------
Every frame is a 4-byte header, ``type`` (1 byte) and payload length (3 bytes,
big endian), then the payload.  Control frames carry a small JSON object; data
frames carry one IP packet preceded by its 10-byte virtio-net header (so TSO/GSO
super-packets of up to 64 KiB cross the tunnel whole).  The sender packs many
frames into one TLS write.

    agent                                   gateway
      HELLO {version, tunnel_addr}  ---->
                                    <----  WELCOME {version, identity, session}
      LEASE {fqdn, addr}            ---->  (policy check, private DNS lookup)
                                    <----  LEASE_RESULT {fqdn, addr, allowed, reason[, retry: for now only]}
      DATA vnet+packet              <--->  DATA vnet+packet
      RELEASE {addr}                ---->
      DC_OFFER {epoch, pub, nonce}  ---->  (UDP data channel keys, ztna/udppath.py)
                                    <----  DC_ACCEPT {epoch, pub, nonce, session, port}
      DC_PATH {udp}                 ---->  (the agent's UDP path is up / has fallen back)
      KEEPALIVE                     <--->  KEEPALIVE
      CLOSE {reason}                <--->  CLOSE {reason}

A frame of unknown type, an over-long frame, JSON that is not an object or is
nested deeper than ``MAX_DEPTH`` is a protocol error: :class:`BadFrame`, and the
connection is closed.  The nesting is measured on the bytes before ``json.loads``
sees them: the parser recurses once per level, and a payload of 4,000 brackets
raised RecursionError, which escaped the decoder and left the session open
(issue 19).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

VERSION = 1

HELLO = 0x01
WELCOME = 0x02
LEASE = 0x03
LEASE_RESULT = 0x04
RELEASE = 0x05
KEEPALIVE = 0x06
CLOSE = 0x07
# The UDP data channel's key exchange and path state (ztna/udppath.py), control frames inside TLS.
DC_OFFER = 0x08
DC_ACCEPT = 0x09
DC_PATH = 0x0A
DATA = 0x10
# Connector tunnel only (ztna/mux.py): channels multiplexed over one PoP <-> gateway tunnel.
OPEN = 0x20
OPENED = 0x21
CHDATA = 0x22
CREDIT = 0x23
CHCLOSE = 0x24

CONTROL = {HELLO, WELCOME, LEASE, LEASE_RESULT, RELEASE, KEEPALIVE, CLOSE, DC_OFFER, DC_ACCEPT, DC_PATH}
MUX_CONTROL = {OPEN, OPENED, CHCLOSE}
MUX_BINARY = {CHDATA, CREDIT}
NAMES = {HELLO: "HELLO", WELCOME: "WELCOME", LEASE: "LEASE", LEASE_RESULT: "LEASE_RESULT",
         RELEASE: "RELEASE", KEEPALIVE: "KEEPALIVE", CLOSE: "CLOSE", DATA: "DATA",
         DC_OFFER: "DC_OFFER", DC_ACCEPT: "DC_ACCEPT", DC_PATH: "DC_PATH",
         OPEN: "OPEN", OPENED: "OPENED", CHDATA: "CHDATA", CREDIT: "CREDIT", CHCLOSE: "CHCLOSE"}
MAX_CHDATA = 4 + 256 * 1024  # channel id + one piece

HEADER = 4
MAX_CONTROL = 4096
MAX_DEPTH = 8  # control objects are flat: {"fqdn": ..., "addr": ...}; 8 leaves room to grow
MAX_DATA = 10 + 65535 + 64  # vnet header + the largest IPv4 packet, with slack
VNET_HDR_LEN = 10


class BadFrame(Exception):
    """The peer sent bytes that are not a valid frame stream.

    ``frames`` holds the valid frames decoded before the bad one in the same
    feed, so a caller can act on them (answer a HELLO) before it closes.
    """

    def __init__(self, message: str, frames: list | None = None):
        super().__init__(message)
        self.frames = frames or []


def frame(ftype: int, payload: bytes = b"") -> bytes:
    return struct.pack("!I", (ftype << 24) | len(payload)) + payload


def control(ftype: int, **fields) -> bytes:
    return frame(ftype, json.dumps(fields, separators=(",", ":")).encode())


def data_header(length: int) -> bytes:
    """Header of a DATA frame whose payload is ``length`` bytes (the payload is sent after it)."""
    return struct.pack("!I", (DATA << 24) | length)


@dataclass(frozen=True)
class Frame:
    """One decoded frame; ``fields`` is the JSON object of a control frame."""

    type: int
    payload: bytes | bytearray
    fields: dict | None = None


class Decoder:
    """Bytes in (``feed_untrusted``), frames out.  No I/O."""

    def __init__(self, *, mux: bool = False) -> None:
        # ``mux``: the connector tunnel, which also carries the channel frames (ztna/mux.py).
        self._buf = bytearray()
        self._control = CONTROL | MUX_CONTROL if mux else CONTROL
        self._binary = MUX_BINARY if mux else frozenset()

    def feed_untrusted(self, data: bytes) -> list[Frame]:
        """Add received bytes; return every complete frame.  Raises only BadFrame."""
        out: list[Frame] = []
        try:
            return self._feed(data, out)
        except BadFrame as exc:
            exc.frames = out
            self._buf.clear()  # the stream is dead; what is left is the bad frame, not an unfinished one
            raise

    def _feed(self, data: bytes, out: list) -> list[Frame]:
        buf = self._buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= HEADER:
            word = int.from_bytes(buf[pos:pos + 4], "big")
            ftype, length = word >> 24, word & 0xFFFFFF
            if ftype == DATA:
                if length > MAX_DATA or length < VNET_HDR_LEN + 20:
                    raise BadFrame(f"DATA frame of {length} bytes is outside {VNET_HDR_LEN + 20}..{MAX_DATA}")
            elif ftype in self._binary:
                if ftype == CHDATA and not 4 < length <= MAX_CHDATA:
                    raise BadFrame(f"CHDATA frame of {length} bytes is outside 5..{MAX_CHDATA}")
                if ftype == CREDIT and length != 8:
                    raise BadFrame(f"CREDIT frame of {length} bytes, not 8")
            elif ftype in self._control:
                if length > MAX_CONTROL:
                    raise BadFrame(f"{NAMES[ftype]} frame of {length} bytes exceeds {MAX_CONTROL}")
            else:
                raise BadFrame(f"unknown frame type 0x{ftype:02x}")
            if n - pos - HEADER < length:
                break
            # DATA payloads are mutable: the gateway rewrites addresses in place.
            payload = buf[pos + HEADER:pos + HEADER + length]
            pos += HEADER + length
            if ftype == DATA or ftype in self._binary:
                out.append(Frame(ftype, payload))
            else:
                out.append(Frame(ftype, b"", _fields_untrusted(ftype, payload)))
        if pos:
            del buf[:pos]
        return out

    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)


def _nesting(payload: bytes | bytearray, limit: int) -> int:
    """How deep the JSON arrays and objects of ``payload`` nest (strings skipped), stopping past ``limit``."""
    depth = deepest = 0
    in_str = esc = False
    for b in payload:
        if in_str:
            if esc:
                esc = False
            elif b == 0x5C:  # backslash
                esc = True
            elif b == 0x22:  # quote
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b == 0x5B or b == 0x7B:  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return deepest
        elif b == 0x5D or b == 0x7D:  # ] }
            depth -= 1
    return deepest


def _fields_untrusted(ftype: int, payload: bytes) -> dict:
    if not payload:
        return {}
    # The scan walks the payload in Python (15x the parse of a 4 KiB frame); fewer opening
    # brackets than MAX_DEPTH cannot nest deeper, and every control frame we send is that flat.
    if payload.count(b"[") + payload.count(b"{") > MAX_DEPTH and _nesting(payload, MAX_DEPTH) > MAX_DEPTH:
        raise BadFrame(f"{NAMES[ftype]} payload is nested deeper than {MAX_DEPTH} levels")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadFrame(f"{NAMES[ftype]} payload is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadFrame(f"{NAMES[ftype]} payload is not a JSON object")
    return obj
