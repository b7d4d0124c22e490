"""HTTP/1.1 response heads and message bodies, for the reverse proxy's relay.

Request heads come from :mod:`gateway.proxy.http1` (with its smuggling
defences); this module adds what a *reverse* proxy also reads: the app's
response head (:func:`parse_response_head_untrusted`), where a response body
ends (:func:`response_length`, RFC 9112 6.3) and :class:`Body`, which follows
a body of either side as it streams past, so the relay knows where it ends
without ever holding it whole.  Only :class:`BadResponse` escapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.proxy import http1

CHUNKED, UNTIL_CLOSE = "chunked", "close"


class BadResponse(Exception):
    """A response head or a body's framing that cannot be relayed."""


@dataclass(frozen=True)
class ResponseHead:
    """A parsed status line and header fields."""

    version: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header(self, name: str) -> str | None:
        got = self.all(name)
        return got[0] if got else None


def parse_response_head_untrusted(buf: bytes, *, max_head: int = http1.MAX_HEAD) -> tuple[ResponseHead, int] | None:
    """(head, bytes used) once the blank line is in ``buf``; None while more is needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > max_head:
            raise BadResponse(f"response head larger than {max_head} bytes")
        return None
    if end + 4 > max_head:
        raise BadResponse(f"response head larger than {max_head} bytes")
    lines = buf[:end].split(b"\r\n")
    if len(lines) - 1 > http1.MAX_HEADERS:
        raise BadResponse(f"response has more than {http1.MAX_HEADERS} header fields")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise BadResponse(f"status line {lines[0][:80]!r} is not 'HTTP/1.x NNN reason'")
    try:
        headers = tuple(http1._field(line) for line in lines[1:])
    except http1.BadRequest as exc:
        raise BadResponse(f"response header: {exc}") from None
    named = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
    framing = named & {"content-length", "transfer-encoding"}
    if framing:
        # The mirror of http1.hop_by_hop's refusal: obeying would strip the browser's only
        # framing field while the gateway framed the body by it, and the browser would wait
        # for a close that never comes on a kept-alive connection.
        raise BadResponse(f"Connection names {', '.join(sorted(framing))}: a framing field cannot be hop-by-hop")
    return ResponseHead(version.decode(), int(code), reason.decode("latin-1"), headers), end + 4


def response_length(method: str, head: ResponseHead) -> int | str:
    """Bytes of body that follow: a count, ``chunked`` or ``close`` (read until the app closes)."""
    if method == "HEAD" or 100 <= head.status < 200 or head.status in (204, 304):
        return 0
    te = [t.strip().lower() for v in head.all("transfer-encoding") for t in v.split(",") if t.strip()]
    if te:
        return CHUNKED if te[-1] == "chunked" else UNTIL_CLOSE
    cl = head.all("content-length")
    if cl:
        values = {v.strip() for c in cl for v in c.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit() or len(next(iter(values))) > 18:
            raise BadResponse(f"bad Content-Length {cl!r} from the app")
        return int(next(iter(values)))
    return UNTIL_CLOSE


class Body:
    """Follows one body as it streams: ``feed_untrusted(data) -> (body part, bytes after the body)``.

    ``done`` turns True at the body's last byte (never for ``close``: the
    shell ends that one at EOF).  Chunked bodies are passed on as they are,
    framing and all; only their sizes are read.
    """

    def __init__(self, length: int | str):
        self.length = length
        self.left = length if isinstance(length, int) else 0
        self.state = "size" if length == CHUNKED else "raw"
        self.line = b""
        self.done = length == 0

    def feed_untrusted(self, data: bytes) -> tuple[bytes, bytes]:
        if self.done:
            return b"", data
        if self.length == UNTIL_CLOSE:
            return data, b""
        if self.state == "raw":
            part = data[:self.left]
            self.left -= len(part)
            self.done = self.left == 0
            return part, data[len(part):]
        return self._chunked(data)

    def _chunked(self, data: bytes) -> tuple[bytes, bytes]:
        i, n = 0, len(data)
        while i < n and not self.done:
            if self.state == "data":
                take = min(self.left, n - i)
                i += take
                self.left -= take
                if not self.left:
                    self.state = "crlf"
                continue
            j = data.find(b"\n", i)
            piece = data[i:] if j < 0 else data[i:j + 1]
            self.line += piece
            i += len(piece)
            if len(self.line) > http1.MAX_LINE:
                raise BadResponse("chunk size or trailer line too long")
            if self.state == "crlf" and not b"\r\n".startswith(self.line):
                raise BadResponse("chunk data not followed by CRLF")
            if j < 0:
                break
            line, self.line = self.line, b""
            if not line.endswith(b"\r\n"):
                raise BadResponse("bare LF in chunked framing")
            line = line[:-2]
            if self.state == "crlf":
                if line:
                    raise BadResponse("chunk data not followed by CRLF")
                self.state = "size"
            elif self.state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise BadResponse(f"bad chunk size {line[:20]!r}")
                self.left = int(size, 16)
                self.state = "data" if self.left else "trailer"
            elif not line:  # trailer section ends with an empty line
                self.done = True
        return data[:i], data[i:]
