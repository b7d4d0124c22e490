"""DNS messages on the resolver's hot path, by hand: parse queries and upstream
replies, build answers.

Why not dnslib here: every query passes through this module, and a general
parser that builds objects for every field costs more than the whole decision.
Only the parts the resolver needs are read, and an upstream reply is kept as
its packed sections so a cached answer is one header plus a byte copy.

The untrusted parsers let exactly one error escape: :class:`BadMessage`,
whose ``rcode`` says how to answer (None: drop silently).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
from dataclasses import dataclass, field

from ztna.dnswire import BadMessage  # the one error for a DNS message that cannot be used
from ztna.edns import DEVICE_ID_OPTION, MAX_DEVICE_ID

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}
T_A, T_NS, T_CNAME, T_SOA, T_AAAA, T_OPT = 1, 2, 5, 6, 28, 41
CLASS_IN = 1
EDE_OPTION = 15
EDE_BLOCKED, EDE_PROHIBITED, EDE_NETWORK_ERROR = 15, 18, 23
OUR_UDP_SIZE = 1232
MAX_RRS = 512

_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")



@dataclass(slots=True)
class Query:
    """One client question and the EDNS facts that shape its answer."""

    id: int
    flags: int
    question: bytes          # qname as asked + qtype + qclass, echoed in the answer
    qname: str               # lower case, no trailing dot, '\\DDD' for unusual bytes
    qtype: int
    qclass: int
    edns: bool = False
    udp_size: int = 512
    do: bool = False
    device: str | None = None
    bad_device: bool = False
    ignored_device: str | None = None  # carried, but from a source not in server.device_id_networks

    @property
    def rd(self) -> bool:
        return bool(self.flags & 0x0100)

    def limit(self, tcp: bool) -> int:
        """The largest answer this client takes (RFC 1035 / RFC 6891)."""
        return 65535 if tcp else (max(512, min(self.udp_size, 4096)) if self.edns else 512)


_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_*-]*")


def _label_text(raw: bytes) -> str:
    """A label as text; a dot, backslash or unprintable byte becomes ``\\DDD`` so it cannot fake a label boundary."""
    if _PLAIN_LABEL.fullmatch(raw):
        return raw.decode("ascii").lower()
    out = []
    for c in raw:
        ch = chr(c)
        out.append(ch.lower() if 33 <= c < 127 and ch not in ".\\" else f"\\{c:03d}")
    return "".join(out)


def _read_qname(data: bytes, off: int) -> tuple[str, int]:
    """An uncompressed name (queries carry no pointers); returns (text, end offset)."""
    labels = []
    start = off
    n = len(data)
    while True:
        if off >= n:
            raise BadMessage("question name runs past the end of the message")
        ln = data[off]
        if ln == 0:
            off += 1
            break
        if ln & 0xC0:
            raise BadMessage("compression pointer or extended label in a question")
        labels.append(_label_text(data[off + 1:off + 1 + ln]))
        off += 1 + ln
        if off > n:
            raise BadMessage("question label runs past the end of the message")
    if off - start > 255:
        raise BadMessage("question name longer than 255 octets")
    return ".".join(labels), off


def _skip_name(data: bytes, off: int) -> int:
    n = len(data)
    while True:
        if off >= n:
            raise BadMessage("name runs past the end of the message")
        ln = data[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                raise BadMessage("compression pointer cut short")
            return off + 2
        if ln & 0xC0:
            raise BadMessage("extended label type")
        off += 1 + ln


def read_name(data: bytes, off: int) -> str:
    """A possibly compressed name at ``off``, lower case (for CNAME targets)."""
    labels = []
    jumps = 0
    n = len(data)
    while True:
        if off >= n:
            raise BadMessage("name runs past the end of the message")
        ln = data[off]
        if ln == 0:
            return ".".join(labels)
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                raise BadMessage("compression pointer cut short")
            jumps += 1
            if jumps > 64:
                raise BadMessage("compression pointer loop")
            off = ((ln & 0x3F) << 8) | data[off + 1]
            continue
        if ln & 0xC0:
            raise BadMessage("extended label type")
        labels.append(_label_text(data[off + 1:off + 1 + ln]))
        off += 1 + ln


def parse_query_untrusted(data: bytes) -> Query:
    """Parse a client's query; only BadMessage escapes."""
    try:
        return _parse_query(data)
    except BadMessage:
        raise
    except Exception as exc:  # belt and braces: a parser bug must not kill the server
        raise BadMessage(f"malformed query ({type(exc).__name__}: {exc})") from exc


def _parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise BadMessage(f"{len(data)}-byte message is shorter than a DNS header", None)
    ident, flags, qd, an, ns, ar = _H.unpack_from(data)
    if flags & 0x8000:
        raise BadMessage("a response sent to the resolver", None)
    if (flags >> 11) & 0xF != 0:
        raise BadMessage(f"opcode {(flags >> 11) & 0xF} is not QUERY", NOTIMP)
    if qd != 1:
        raise BadMessage(f"{qd} questions in one query (exactly one is allowed)")
    if an or ns:
        raise BadMessage(f"a query with {an} answer and {ns} authority records")
    if ar > MAX_RRS:
        raise BadMessage(f"{ar} additional records")
    qname, off = _read_qname(data, 12)
    if off + 4 > len(data):
        raise BadMessage("question cut short before its type and class")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    q = Query(ident, flags, data[12:off + 4], qname, qtype, qclass)
    off += 4
    for _ in range(ar):
        name_start = off
        off = _skip_name(data, off)
        if off + 10 > len(data):
            raise BadMessage("additional record cut short")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
        off += 10
        if off + rdlen > len(data):
            raise BadMessage("additional record data runs past the end")
        if rtype == T_OPT:
            if q.edns:
                raise BadMessage("more than one OPT record")
            if data[name_start] != 0:
                raise BadMessage("OPT record not owned by the root")
            q.edns = True
            q.udp_size = rclass
            q.do = bool(ttl & 0x8000)
            version = (ttl >> 16) & 0xFF
            _read_options(q, data[off:off + rdlen])
            if version != 0:
                raise BadMessage(f"EDNS version {version}", BADVERS)
        off += rdlen
    if off != len(data):
        raise BadMessage(f"{len(data) - off} bytes after the last record")
    return q


def _read_options(q: Query, rdata: bytes) -> None:
    off = 0
    while off < len(rdata):
        if off + 4 > len(rdata):
            raise BadMessage("EDNS option header cut short")
        code, ln = struct.unpack_from("!HH", rdata, off)
        off += 4
        if off + ln > len(rdata):
            raise BadMessage(f"EDNS option {code} runs past its record")
        if code == DEVICE_ID_OPTION:
            raw = rdata[off:off + ln]
            if 0 < ln <= MAX_DEVICE_ID and raw.isascii() and raw.decode("ascii").isprintable():
                q.device = raw.decode("ascii")
            else:
                q.bad_device = True
        off += ln


def question_of_untrusted(data: bytes) -> tuple[int, int, bytes]:
    """(id, flags, question bytes or b"") from a message parse_query refused: enough to answer it."""
    if len(data) < 12:
        raise BadMessage("shorter than a header", None)
    ident, flags, qd = struct.unpack_from("!HHH", data)
    if qd == 1:
        try:
            _, off = _read_qname(data, 12)
            if off + 4 <= len(data):
                return ident, flags, data[12:off + 4]
        except BadMessage:
            pass
    return ident, flags, b""


# ---- building answers ------------------------------------------------------

def opt_record(*, do: bool = False, ext_rcode: int = 0, ede: tuple[int, str] | None = None, udp_size: int = OUR_UDP_SIZE) -> bytes:
    """Our OPT record, with an Extended DNS Error (RFC 8914) when given."""
    opts = b""
    if ede is not None:
        text = ede[1].encode("utf-8")[:200]
        opts = struct.pack("!HHH", EDE_OPTION, 2 + len(text), ede[0]) + text
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", T_OPT, udp_size, ttl, len(opts)) + opts


def _flags(q_flags: int, rcode: int, *, aa: bool = False, tc: bool = False) -> int:
    # QR, opcode and RD from the query, RA set, CD echoed.
    return 0x8000 | (q_flags & 0x7900) | (q_flags & 0x0010) | 0x0080 | (0x0400 if aa else 0) | (0x0200 if tc else 0) | (rcode & 0xF)


def error_answer(ident: int, flags: int, question: bytes, rcode: int, *, edns: bool = False, do: bool = False,
                 ede: tuple[int, str] | None = None) -> bytes:
    """A header (+ question echoed, + OPT when the client spoke EDNS) with ``rcode``."""
    opt = opt_record(do=do, ext_rcode=rcode >> 4, ede=ede) if edns else b""
    return _H.pack(ident, _flags(flags, rcode & 0xF), 1 if question else 0, 0, 0, 1 if opt else 0) + question + opt


def refusal(q: Query, rcode: int = REFUSED, ede: tuple[int, str] | None = None) -> bytes:
    return error_answer(q.id, q.flags, q.question, rcode, edns=q.edns, do=q.do, ede=ede)


@functools.lru_cache(maxsize=256)
def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def address_answer(q: Query, addresses: list[str], ttl: int, ede: tuple[int, str] | None = None) -> bytes:
    """NOERROR with A/AAAA records owned by the question's name (pointer to offset 12)."""
    rrs = []
    for a in addresses:
        raw = _packed(a)
        rtype = T_A if len(raw) == 4 else T_AAAA
        rrs.append(b"\xc0\x0c" + _RR.pack(rtype, CLASS_IN, ttl, len(raw)) + raw)
    opt = opt_record(do=q.do, ede=ede) if q.edns else b""
    return _H.pack(q.id, _flags(q.flags, NOERROR), 1, len(rrs), 0, 1 if opt else 0) + q.question + b"".join(rrs) + opt


def truncated(q: Query) -> bytes:
    """The answer did not fit the client's buffer: TC set, no records (RFC 2181 §9)."""
    opt = opt_record(do=q.do) if q.edns else b""
    return _H.pack(q.id, _flags(q.flags, NOERROR, tc=True), 1, 0, 0, 1 if opt else 0) + q.question + opt


# ---- upstream replies --------------------------------------------------------

@dataclass(slots=True)
class Upstream:
    """An upstream reply kept as packed sections, ready to be served again.

    ``sections`` follows a question of the same length as any client's
    question for this name (case may differ), so its compression pointers
    stay valid.  ``ttl_offsets`` locate each TTL inside ``sections``.
    """

    rcode: int
    aa: bool
    counts: tuple[int, int, int]
    sections: bytes
    ttl_offsets: list[int] = field(default_factory=list)
    ttls: list[int] = field(default_factory=list)
    cnames: list[tuple[str, str]] = field(default_factory=list)  # (owner, target) in chain order
    ttl: int = 0                      # how long the whole answer may be cached
    truncated: bool = False


def parse_reply_untrusted(data: bytes, qid: int, question: bytes, *, negative_ttl: int = 60) -> Upstream:
    """Parse an upstream's reply to our query ``qid``/``question``; only BadMessage escapes."""
    try:
        return _parse_reply(data, qid, question, negative_ttl)
    except BadMessage:
        raise
    except Exception as exc:
        raise BadMessage(f"malformed upstream reply ({type(exc).__name__}: {exc})") from exc


def _parse_reply(data: bytes, qid: int, question: bytes, negative_ttl: int) -> Upstream:
    if len(data) < 12:
        raise BadMessage("upstream reply shorter than a header", None)
    ident, flags, qd, an, ns, ar = _H.unpack_from(data)
    if ident != qid or not flags & 0x8000:
        raise BadMessage("not the reply to our query (id or QR differs)", None)
    if qd != 1:
        raise BadMessage(f"upstream reply with {qd} questions", None)
    qend = 12 + len(question)
    if data[12:qend].lower() != question.lower():
        raise BadMessage("upstream reply is for another question", None)
    rcode = flags & 0xF
    tc = bool(flags & 0x0200)
    if an + ns + ar > MAX_RRS:
        raise BadMessage("upstream reply with too many records", None)
    off = qend
    ttl_offsets, ttls, cnames = [], [], []
    kept_end = off
    kept_ar = 0
    soa_ttl = None
    for i in range(an + ns + ar):
        rstart = off
        off = _skip_name(data, off)
        if off + 10 > len(data):
            raise BadMessage("upstream record cut short", None)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
        if off + 10 + rdlen > len(data):
            raise BadMessage("upstream record data runs past the end", None)
        if rtype == T_OPT:
            # Only ever the last record in practice; what follows it is dropped.
            break
        ttl = min(ttl, 0x7FFFFFFF)
        ttl_offsets.append(off + 4 - qend)
        ttls.append(ttl)
        if i < an and rtype == T_CNAME:
            cnames.append((read_name(data, rstart), read_name(data, off + 10)))
        if an <= i < an + ns and rtype == T_SOA:
            # RFC 2308: negative answers live min(SOA TTL, SOA MINIMUM).
            minimum = struct.unpack_from("!I", data, off + 10 + rdlen - 4)[0] if rdlen >= 20 else ttl
            soa_ttl = min(ttl, minimum)
        off += 10 + rdlen
        kept_end = off
        if i >= an + ns:
            kept_ar += 1
    answer_ttls = ttls[:an]
    if rcode == NOERROR and answer_ttls:
        cache_ttl = min(answer_ttls)
    elif rcode in (NOERROR, NXDOMAIN):
        cache_ttl = soa_ttl if soa_ttl is not None else negative_ttl
        cache_ttl = min(cache_ttl, negative_ttl)
    else:
        cache_ttl = 0  # SERVFAIL, REFUSED...: never cached
    if tc:
        cache_ttl = 0
    return Upstream(rcode, bool(flags & 0x0400), (an, ns, kept_ar), data[qend:kept_end], ttl_offsets, ttls, cnames, cache_ttl, tc)


def cached_answer(q: Query, up: Upstream, age: int, *, ede: tuple[int, str] | None = None, ident: bytes | None = None) -> bytes:
    """The client's answer from an upstream reply ``age`` seconds old (TTLs counted down).

    ``ident``: the two ID bytes to use instead of ``q.id`` (a replayed query).
    """
    body = bytearray(up.sections)
    if age > 0:
        for o, t in zip(up.ttl_offsets, up.ttls):
            struct.pack_into("!I", body, o, t - age if t > age else 0)
    opt = opt_record(do=q.do, ede=ede) if q.edns else b""
    an, ns, ar = up.counts
    head = _H.pack(q.id, _flags(q.flags, up.rcode), 1, an, ns, ar + (1 if opt else 0))
    if ident is not None:
        head = ident + head[2:]
    return head + q.question + bytes(body) + opt


class AgedAnswer:
    """One client's answer from an upstream reply, ready to be re-aged in one ``Struct.pack``.

    Why: a repeated query for a cached name is answered from the memo, and
    its TTLs go down once a second; rebuilding the message each second for
    every name costs more than the rest of the query.  The answer (without
    its ID) is cut at its TTL fields once; re-aging packs the pieces and the
    counted-down TTLs together.
    """

    __slots__ = ("_struct", "_pieces", "_ttls")

    def __init__(self, q: Query, up: Upstream):
        full = cached_answer(q, up, 0)[2:]
        base = 10 + len(q.question)  # where ``sections`` starts, ID removed
        pieces, fmt, last = [], "!", 0
        for o in up.ttl_offsets:
            pieces.append(full[last:base + o])
            fmt += f"{base + o - last}sI"
            last = base + o + 4
        pieces.append(full[last:])
        self._struct = struct.Struct(fmt + f"{len(full) - last}s")
        self._pieces = pieces
        self._ttls = up.ttls

    def at(self, age: int) -> bytes:
        """The answer without its ID, TTLs counted down by ``age`` seconds (not below 0)."""
        args = []
        for piece, t in zip(self._pieces, self._ttls):
            args.append(piece)
            args.append(t - age if t > age else 0)
        args.append(self._pieces[-1])
        return self._struct.pack(*args)


def query_bytes(ident: int, question: bytes, *, rd: bool = True, udp_size: int = OUR_UDP_SIZE, do: bool = False) -> bytes:
    """Our query to an upstream, with EDNS so answers up to ``udp_size`` come over UDP."""
    return _H.pack(ident, 0x0100 if rd else 0, 1, 0, 0, 1) + question + opt_record(do=do, udp_size=udp_size)
