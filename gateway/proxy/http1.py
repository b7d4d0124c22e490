"""HTTP/1.1 request heads and request streams, as much as a forward proxy needs.

* :func:`parse_request_head_untrusted` reads one request head (a CONNECT, an
  absolute-form ``GET http://...``, or an origin-form request inside a
  decrypted tunnel) under size caps;
* :class:`RequestStream` follows a client's requests one after another
  (Content-Length and chunked bodies) so the relay can check each inner Host
  and forward every byte exactly once.

Only :class:`BadRequest` escapes; it carries the status code to answer with.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_HEAD = 16 * 1024
MAX_LINE = 8 * 1024
MAX_HEADERS = 100

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The same sets as bytes for bytes.translate(None, allowed), which leaves only the bytes
# not allowed (a C loop: a generator over every byte cost more than the rest of a parse).
_TOKEN_BYTES = bytes(sorted(_TOKEN))
_TARGET_BYTES = bytes(range(0x21, 0x7F))  # no control, space or non-ASCII byte
_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])  # HTAB, visible, obs-text


class BadRequest(Exception):
    """A request the proxy refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    """A parsed request line and header fields; ``raw`` is the bytes they came in."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    raw: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


def parse_request_head_untrusted(buf: bytes, *, max_head: int = MAX_HEAD, max_line: int = MAX_LINE,
                                 max_headers: int = MAX_HEADERS) -> tuple[RequestHead, int] | None:
    """Parse the request head at the start of ``buf``.

    Returns (head, bytes consumed) once the blank line has arrived, None while
    more bytes are needed, and raises :class:`BadRequest` (400, 414 or 431)
    as soon as the bytes cannot become an acceptable head.
    """
    start = 0
    while buf.startswith(b"\r\n", start):  # RFC 9112 2.2: ignore leading empty lines
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        first = buf.find(b"\r\n", start)
        if (first < 0 and len(buf) - start > max_line) or first - start > max_line:
            raise BadRequest(414, f"request line longer than {max_line} bytes")
        if len(buf) - start > max_head:
            raise BadRequest(431, f"request head larger than {max_head} bytes")
        if b"\n" in buf[start:].replace(b"\r\n", b""):
            raise BadRequest(400, "bare LF in request head (lines must end with CRLF)")
        return None
    if end + 4 - start > max_head:
        raise BadRequest(431, f"request head larger than {max_head} bytes")
    raw = buf[start:end + 4]
    lines = buf[start:end].split(b"\r\n")
    if len(lines) - 1 > max_headers:
        raise BadRequest(431, f"more than {max_headers} header fields")
    if len(lines[0]) > max_line:
        raise BadRequest(414, f"request line longer than {max_line} bytes")
    method, target, version = _request_line(lines[0])
    headers = []
    for line in lines[1:]:
        if len(line) > max_line:
            raise BadRequest(431, f"header field longer than {max_line} bytes")
        headers.append(_field(line))
    return RequestHead(method, target, version, tuple(headers), raw), end + 4


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, f"request line {line[:80]!r} is not 'METHOD target HTTP/1.x'")
    method, target, version = parts
    if not method or method.translate(None, _TOKEN_BYTES):
        raise BadRequest(400, f"method {method[:20]!r} is not a token")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, f"version {version[:20]!r} is not HTTP/1.0 or HTTP/1.1")
    if not target or target.translate(None, _TARGET_BYTES):
        raise BadRequest(400, "request target is empty or has control, space or non-ASCII bytes")
    return method.decode(), target.decode(), version.decode()


def _field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequest(400, "obsolete line folding in header fields")
    name, sep, value = line.partition(b":")
    if not sep or not name or name.translate(None, _TOKEN_BYTES):
        raise BadRequest(400, f"header line {line[:60]!r} is not 'name: value'")
    value = value.strip(b" \t")
    if value.translate(None, _VALUE_BYTES):
        raise BadRequest(400, f"control byte in the value of {name.decode()!r}")
    return name.decode(), value.decode("latin-1")


def split_authority(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) -> (host, port); raises BadRequest(400)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BadRequest(400, f"authority {text[:80]!r} has a broken IPv6 literal")
        port_text = rest[1:] if rest else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
        if ":" in host:
            raise BadRequest(400, f"authority {text[:80]!r} has more than one colon")
    if not port_text:
        if default_port is None:
            raise BadRequest(400, f"authority {text[:80]!r} has no port (CONNECT needs host:port)")
        port = default_port
    else:
        if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
            raise BadRequest(400, f"port {port_text[:10]!r} is not a TCP port")
        port = int(port_text)
    if not host:
        raise BadRequest(400, f"authority {text[:80]!r} has no host")
    return host.lower().rstrip("."), port


def absolute_target(target: str) -> tuple[str, int, str]:
    """``http://host[:port]/path`` -> (host, port, origin-form path); raises BadRequest."""
    if target.lower().startswith("https://"):
        raise BadRequest(400, "https:// targets must use CONNECT")
    if not target.lower().startswith("http://"):
        raise BadRequest(400, f"a forward proxy needs an absolute http:// target, got {target[:80]!r}")
    rest = target[7:]
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if "@" in authority:
        raise BadRequest(400, "user information in the target is not accepted")
    if path.startswith("?"):
        path = "/" + path
    host, port = split_authority(authority, default_port=80)
    return host, port, path


# Hop-by-hop fields a proxy must not forward (RFC 9110 7.6.1), plus its own credentials.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization",
                        "proxy-authenticate", "te", "trailer", "upgrade"})


# Fields a client may not declare hop-by-hop: a proxy that dropped them would forward a body
# sized by a Content-Length the next hop never sees (it reads the body as a second request:
# smuggling), or a request without its Host.
NOT_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "host"})


def hop_by_hop(head: RequestHead) -> set[str]:
    """The lower-case names of the fields a proxy drops from ``head`` (RFC 9110 7.6.1).

    :data:`HOP_BY_HOP` and every field the ``Connection`` header names.  A
    ``Connection`` naming a field in :data:`NOT_HOP_BY_HOP` raises
    BadRequest(400): refusing is safer than either obeying or ignoring it.
    """
    named = {t.strip().lower() for v in head.all("connection") for t in v.split(",") if t.strip()}
    bad = named & NOT_HOP_BY_HOP
    if bad:
        raise BadRequest(400, f"Connection names {', '.join(sorted(bad))}: a field that frames or routes the "
                              "request cannot be hop-by-hop (a proxy dropping it would let the body smuggle a request)")
    return set(HOP_BY_HOP) | named


def origin_request(head: RequestHead, path: str, *, host_header: str) -> bytes:
    """Rewrite an absolute-form proxy request for the origin.

    Origin-form target, no hop-by-hop fields, one request per connection, and a
    Host taken from the target (RFC 9112 3.2.2: the proxy replaces the client's).
    Raises BadRequest for a ``Connection`` that names a framing field (:func:`hop_by_hop`).
    """
    drop = hop_by_hop(head) | {"host"}
    lines = [f"{head.method} {path} {head.version}", f"Host: {host_header}"]
    lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in drop]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def body_length(head: RequestHead) -> int | str:
    """Bytes of body after ``head``: a count, or ``"chunked"``; refuses ambiguous framing (smuggling)."""
    te = [t.strip().lower() for v in head.all("transfer-encoding") for t in v.split(",") if t.strip()]
    cl = head.all("content-length")
    if te:
        if cl:
            raise BadRequest(400, "both Transfer-Encoding and Content-Length")
        if te[-1] != "chunked":
            raise BadRequest(400, f"Transfer-Encoding {','.join(te)} does not end in chunked")
        return "chunked"
    if cl:
        values = {v.strip() for c in cl for v in c.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
            raise BadRequest(400, f"bad Content-Length {cl!r}")
        return int(next(iter(values)))
    return 0


class RequestStream:
    """Follows the requests a client sends on one connection.

    ``feed(data)`` returns a list of events in order: ``("head", RequestHead)``
    when a request head is complete, and ``("bytes", b"...")`` for bytes to
    forward (a head's raw bytes come right after its ``head`` event, then its
    body).  It raises :class:`BadRequest` on a malformed head or chunk.
    """

    def __init__(self, *, max_head: int = MAX_HEAD):
        self.max_head = max_head
        self.buf = b""
        self.state = "head"  # head | body | chunk-size | chunk-data | chunk-crlf | trailer
        self.left = 0

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        self.buf += data
        out: list[tuple[str, object]] = []
        while self.buf:
            if self.state == "head":
                got = parse_request_head_untrusted(self.buf, max_head=self.max_head)
                if got is None:
                    break
                head, n = got
                out.append(("head", head))
                out.append(("bytes", self.buf[:n]))
                self.buf = self.buf[n:]
                length = body_length(head)
                if length == "chunked":
                    self.state = "chunk-size"
                elif length:
                    self.state, self.left = "body", length
            elif self.state in ("body", "chunk-data"):
                take = self.buf[:self.left]
                self.buf = self.buf[len(take):]
                self.left -= len(take)
                out.append(("bytes", take))
                if not self.left:
                    self.state = "head" if self.state == "body" else "chunk-crlf"
            elif self.state == "chunk-crlf":
                if len(self.buf) < 2:
                    break
                if self.buf[:2] != b"\r\n":
                    raise BadRequest(400, "chunk data not followed by CRLF")
                out.append(("bytes", self.buf[:2]))
                self.buf = self.buf[2:]
                self.state = "chunk-size"
            else:  # chunk-size or trailer: line based
                i = self.buf.find(b"\r\n")
                if i < 0:
                    if len(self.buf) > MAX_LINE:
                        raise BadRequest(400, "chunk size or trailer line too long")
                    break
                line = self.buf[:i]
                out.append(("bytes", self.buf[:i + 2]))
                self.buf = self.buf[i + 2:]
                if self.state == "trailer":
                    if not line:
                        self.state = "head"
                    continue
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size):
                    raise BadRequest(400, f"bad chunk size {line[:20]!r}")
                self.left = int(size, 16)
                self.state = "chunk-data" if self.left else "trailer"
        return out
