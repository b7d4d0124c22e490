"""TLS wire helpers: records, the ClientHello, alerts.

Only what a proxy needs to decide before it touches any key: read the first
flight of a client (the ClientHello, which may be split over several records
and arrive over several TCP segments), find its SNI, ALPN offers and whether
it carries Encrypted Client Hello, and build a fatal alert to refuse with.
The lab also uses :func:`records_untrusted` and :func:`certificates_untrusted`
to read handshakes back from captures.

Every function that reads bytes from the network is named ``*_untrusted`` and
lets exactly one error type escape: :class:`BadTLS`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23

HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_CERTIFICATE = 11

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_SUPPORTED_VERSIONS = 43
EXT_ECH = 0xFE0D  # encrypted_client_hello (draft-ietf-tls-esni)

ALERT_HANDSHAKE_FAILURE = 40
ALERT_ACCESS_DENIED = 49
ALERT_DECODE_ERROR = 50
ALERT_INTERNAL_ERROR = 80
ALERT_UNRECOGNIZED_NAME = 112
ALERT_NO_APPLICATION_PROTOCOL = 120

# A record carries at most 2^14 bytes of plaintext; a ClientHello is one
# handshake message, usually under 2 KiB (post-quantum key shares ~1.8 KiB).
MAX_RECORD = 2**14 + 2048
DEFAULT_MAX_HELLO = 32 * 1024
_EXT_HEAD = struct.Struct("!HH")  # an extension's type and length
_HOST_CHARS = re.compile(r"[A-Za-z0-9._-]+")  # what a host name in server_name may hold (it is ASCII by then)


class BadTLS(Exception):
    """Bytes that are not a usable TLS ClientHello (or record stream).

    ``kind`` says why, so a caller can act on it without parsing the message:
    ``not-tls`` (the first bytes are not a TLS handshake record), ``too-large``
    (over the size cap), ``malformed`` (anything else).
    """

    def __init__(self, message: str, kind: str = "malformed"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Record:
    """One TLS record as seen on the wire."""

    content_type: int
    version: int
    fragment: bytes


@dataclass(frozen=True)
class ClientHello:
    """What a proxy needs from a ClientHello; ``raw`` is the exact record bytes it came in."""

    raw: bytes
    legacy_version: int
    session_id: bytes
    cipher_suites: tuple[int, ...]
    extensions: tuple[tuple[int, bytes], ...]
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    ech: bool = False
    supported_versions: tuple[int, ...] = field(default=())

    def extension(self, ext_type: int) -> bytes | None:
        for t, data in self.extensions:
            if t == ext_type:
                return data
        return None


class _Reader:
    """Bounds-checked cursor; every overrun is a BadTLS."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str):
        self.data = data
        self.pos = 0
        self.what = what

    def _short(self, n: int) -> BadTLS:
        return BadTLS(f"{self.what}: needs {n} bytes at offset {self.pos}, only {len(self.data) - self.pos} left")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self._short(n)
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def u24(self) -> int:
        b = self.take(3)
        return (b[0] << 16) | (b[1] << 8) | b[2]

    def vec8(self) -> bytes:
        return self.take(self.u8())

    def vec16(self) -> bytes:
        return self.take(self.u16())

    def left(self) -> int:
        return len(self.data) - self.pos

    def extensions(self) -> list[tuple[int, bytes]]:
        """The rest, as an extension list: (type, data) for each u16 type and u16-length data.

        Read in place, not by u16() and vec16(): a hello carries a dozen or two, and those
        three calls per extension cost half again the whole ClientHello parse."""
        data, pos, end = self.data, self.pos, len(self.data)
        out = []
        while pos < end:
            if end - pos < 4:
                raise self._short(4)
            t, n = _EXT_HEAD.unpack_from(data, pos)
            self.pos = pos = pos + 4
            if end - pos < n:
                raise self._short(n)
            out.append((t, data[pos:pos + n]))
            self.pos = pos = pos + n
        return out

    def done(self) -> None:
        if self.left():
            raise BadTLS(f"{self.what}: {self.left()} unexpected trailing bytes")


def _record_header(data: bytes, pos: int) -> tuple[int, int, int] | None:
    if len(data) - pos < 5:
        return None
    ctype, version, length = struct.unpack_from("!BHH", data, pos)
    if ctype not in (CONTENT_CHANGE_CIPHER_SPEC, CONTENT_ALERT, CONTENT_HANDSHAKE, CONTENT_APPLICATION_DATA, 24):
        raise BadTLS(f"record at offset {pos}: content type {ctype} is not TLS", "not-tls" if pos == 0 else "malformed")
    if version >> 8 != 3:
        raise BadTLS(f"record at offset {pos}: version 0x{version:04x} is not TLS", "not-tls" if pos == 0 else "malformed")
    if length > MAX_RECORD:
        raise BadTLS(f"record at offset {pos}: length {length} exceeds the TLS maximum")
    return ctype, version, length


def records_untrusted(data: bytes) -> tuple[list[Record], bytes]:
    """Split a byte stream into whole records; returns (records, incomplete tail)."""
    out: list[Record] = []
    pos = 0
    while True:
        hdr = _record_header(data, pos)
        if hdr is None or len(data) - pos - 5 < hdr[2]:
            return out, data[pos:]
        ctype, version, length = hdr
        out.append(Record(ctype, version, data[pos + 5:pos + 5 + length]))
        pos += 5 + length


def parse_client_hello_untrusted(data: bytes, *, max_size: int = DEFAULT_MAX_HELLO) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data``.

    Returns None while more bytes are needed, the ClientHello once whole (its
    ``raw`` is the exact prefix of ``data`` that carried it, so a splicing proxy
    can forward it unchanged), and raises :class:`BadTLS` for anything else:
    bytes that are not TLS, a first message that is not a ClientHello, a
    message over ``max_size``, or any field that overruns its container.
    """
    handshake = bytearray()
    pos = 0
    need: int | None = None
    while True:
        hdr = _record_header(data, pos)
        if hdr is None:
            return None
        ctype, _version, length = hdr
        if ctype != CONTENT_HANDSHAKE:
            raise BadTLS(f"expected a handshake record, got content type {ctype}", "not-tls" if pos == 0 else "malformed")
        if length == 0:
            raise BadTLS("empty handshake record")
        if len(data) - pos - 5 < length:
            if len(handshake) + length > max_size + 4:
                raise BadTLS(f"ClientHello is larger than {max_size} bytes", "too-large")
            return None
        handshake += data[pos + 5:pos + 5 + length]
        pos += 5 + length
        if need is None and len(handshake) >= 4:
            if handshake[0] != HS_CLIENT_HELLO:
                raise BadTLS(f"first handshake message is type {handshake[0]}, not ClientHello")
            need = 4 + int.from_bytes(handshake[1:4], "big")
            if need > max_size + 4:
                raise BadTLS(f"ClientHello of {need - 4} bytes is larger than {max_size}", "too-large")
        if need is not None and len(handshake) >= need:
            if len(handshake) > need:
                raise BadTLS("bytes after the ClientHello in its last record")
            return _client_hello(bytes(handshake[4:]), bytes(data[:pos]))


def _client_hello(body: bytes, raw: bytes) -> ClientHello:
    r = _Reader(body, "ClientHello")
    legacy_version = r.u16()
    if legacy_version >> 8 != 3:
        raise BadTLS(f"ClientHello version 0x{legacy_version:04x} is not TLS")
    r.take(32)  # random
    session_id = r.vec8()
    if len(session_id) > 32:
        raise BadTLS("ClientHello session id longer than 32 bytes")
    suites_raw = r.vec16()
    if len(suites_raw) < 2 or len(suites_raw) % 2:
        raise BadTLS("ClientHello cipher suite list is empty or odd-sized")
    suites = struct.unpack(f"!{len(suites_raw) // 2}H", suites_raw)
    if not r.vec8():
        raise BadTLS("ClientHello offers no compression method")
    extensions: list[tuple[int, bytes]] = []
    if r.left():
        extensions = _Reader(r.vec16(), "ClientHello extensions").extensions()
        r.done()
    types = [t for t, _ in extensions]
    seen = set(types)
    if len(seen) != len(types):
        raise BadTLS(f"ClientHello repeats extension {next(t for i, t in enumerate(types) if t in types[:i])}")
    sni = alpn = versions = None
    for t, d in extensions:
        if t == EXT_SERVER_NAME:
            sni = _sni(d)
        elif t == EXT_ALPN:
            alpn = _alpn(d)
        elif t == EXT_SUPPORTED_VERSIONS:
            versions = _versions(d)
    return ClientHello(
        raw=raw, legacy_version=legacy_version, session_id=session_id, cipher_suites=suites,
        extensions=tuple(extensions), sni=sni, alpn=alpn or (),
        ech=EXT_ECH in seen, supported_versions=versions or (),
    )


def _sni(data: bytes) -> str | None:
    r = _Reader(data, "server_name extension")
    if not r.left():
        return None  # servers echo an empty SNI; a client should not, but it is not fatal
    lst = _Reader(r.vec16(), "server_name list")
    r.done()
    name = None
    while lst.left():
        kind = lst.u8()
        value = lst.vec16()
        if kind == 0:
            if name is not None:
                raise BadTLS("server_name has two host names")
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError as exc:
                raise BadTLS("server_name host name is not ASCII") from exc
            if not text or len(text) > 253 or not _HOST_CHARS.fullmatch(text):
                raise BadTLS(f"server_name {text[:80]!r} is not a host name")
            name = text.rstrip(".").lower()
    return name


def _alpn(data: bytes) -> tuple[str, ...]:
    r = _Reader(data, "ALPN extension")
    lst = _Reader(r.vec16(), "ALPN list")
    r.done()
    out = []
    while lst.left():
        p = lst.vec8()
        if not p:
            raise BadTLS("empty ALPN protocol name")
        out.append(p.decode("latin-1"))
    return tuple(out)


def _versions(data: bytes) -> tuple[int, ...]:
    r = _Reader(data, "supported_versions extension")
    raw = r.vec8()
    r.done()
    if len(raw) % 2:
        raise BadTLS("supported_versions list is odd-sized")
    return struct.unpack(f"!{len(raw) // 2}H", raw)


class ClientHelloBuffer:
    """Collects a client's first bytes until its ClientHello is whole.

    Feed it segments as they arrive; ``feed`` returns the ClientHello once
    complete (and keeps any bytes after it in ``rest``), None while waiting,
    and raises :class:`BadTLS` as soon as the bytes cannot become one.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_HELLO):
        self.max_size = max_size
        self.data = b""
        self.rest = b""
        self.hello: ClientHello | None = None
        self._wait = 0  # parse again only once a record can be whole (slow senders cost O(n), not O(n^2))

    def feed(self, chunk: bytes) -> ClientHello | None:
        if self.hello is not None:
            self.rest += chunk
            return self.hello
        self.data += chunk
        if len(self.data) < self._wait:
            return None
        hello = parse_client_hello_untrusted(self.data, max_size=self.max_size)
        if hello is None:
            self._wait = _next_record_end(self.data)
            return None
        self.hello = hello
        self.rest = self.data[len(hello.raw):]
        return hello


def _next_record_end(data: bytes) -> int:
    pos = 0
    while len(data) - pos >= 5:
        length = struct.unpack_from("!H", data, pos + 3)[0]
        if len(data) - pos - 5 < length:
            return pos + 5 + length
        pos += 5 + length
    return pos + 5


def alert(description: int, *, version: int = 0x0303) -> bytes:
    """A fatal alert record, the protocol-correct way to refuse before any key exists."""
    return struct.pack("!BHHBB", CONTENT_ALERT, version, 2, 2, description)


def handshake_messages_untrusted(records: list[Record]) -> list[tuple[int, bytes]]:
    """(type, body) of the plaintext handshake messages in ``records`` (reassembled across records)."""
    buf = b"".join(r.fragment for r in records if r.content_type == CONTENT_HANDSHAKE)
    out = []
    r = _Reader(buf, "handshake stream")
    while r.left() >= 4:
        t = r.u8()
        n = r.u24()
        if r.left() < n:
            break
        out.append((t, r.take(n)))
    return out


def certificates_untrusted(body: bytes, *, tls13: bool = False) -> list[bytes]:
    """DER certificates of a Certificate handshake message body (TLS 1.2 layout unless ``tls13``)."""
    r = _Reader(body, "Certificate message")
    if tls13:
        r.vec8()  # certificate_request_context
    lst = _Reader(r.take(r.u24()), "certificate_list")
    r.done()
    out = []
    while lst.left():
        out.append(lst.take(lst.u24()))
        if tls13:
            lst.vec16()  # per-certificate extensions
    return out


def server_hello_version_untrusted(body: bytes) -> int:
    """The negotiated version of a ServerHello body (supported_versions wins over the legacy field)."""
    r = _Reader(body, "ServerHello")
    version = r.u16()
    r.take(32)
    r.vec8()
    r.u16()
    r.u8()
    if r.left():
        for t, d in _Reader(r.vec16(), "ServerHello extensions").extensions():
            if t == EXT_SUPPORTED_VERSIONS and len(d) == 2:
                version = struct.unpack("!H", d)[0]
    return version
