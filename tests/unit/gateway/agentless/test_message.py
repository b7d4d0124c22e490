"""gateway.agentless.message and rewrite: response heads, body framing, header rewriting."""

import pytest
from hypothesis import given, settings, strategies as st

from gateway.agentless import message as m, rewrite
from gateway.proxy import http1


def head(raw: bytes) -> http1.RequestHead:
    got = http1.parse_request_head_untrusted(raw)
    assert got is not None
    return got[0]


def feed_all(body: m.Body, data: bytes, step: int | None):
    parts, rest = [], b""
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for p in pieces:
        part, more = body.feed_untrusted(p)
        parts.append(part)
        rest += more
    return b"".join(parts), rest


CHUNKED = b"5;ext=1\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nTrailer: t\r\n\r\n"


@pytest.mark.parametrize("step", [None, 1, 3, 7])
def test_chunked_body_ends_at_its_last_byte_whole_or_byte_by_byte(step):
    b = m.Body(m.CHUNKED)
    got, rest = feed_all(b, CHUNKED + b"GET /next", step)
    assert got == CHUNKED and rest == b"GET /next" and b.done


@pytest.mark.parametrize("step", [None, 1, 4])
def test_counted_body(step):
    b = m.Body(10)
    got, rest = feed_all(b, b"0123456789NEXT", step)
    assert got == b"0123456789" and rest == b"NEXT" and b.done


@pytest.mark.parametrize("bad", [b"zz\r\n", b"5\r\nhelloXX", b"5\nhello\r\n", b"1" * 20 + b"\r\n", b"5" + b" " * 9000])
def test_bad_chunked_framing_raises_badmessage(bad):
    with pytest.raises(m.BadResponse):
        m.Body(m.CHUNKED).feed_untrusted(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_chunked_raises_only_badmessage(data):
    try:
        m.Body(m.CHUNKED).feed_untrusted(data)
    except m.BadResponse:
        pass


def test_response_head_and_length_rules():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello"
    h, n = m.parse_response_head_untrusted(raw)
    assert h.status == 200 and raw[n:] == b"hello" and m.response_length("GET", h) == 5
    assert m.response_length("HEAD", h) == 0
    h, _ = m.parse_response_head_untrusted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert m.response_length("GET", h) == m.CHUNKED
    h, _ = m.parse_response_head_untrusted(b"HTTP/1.1 200 OK\r\n\r\n")
    assert m.response_length("GET", h) == m.UNTIL_CLOSE
    h, _ = m.parse_response_head_untrusted(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
    assert m.response_length("GET", h) == 0
    assert m.parse_response_head_untrusted(b"HTTP/1.1 200 OK\r\n") is None
    for bad in (b"HTTP/2 200 OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
                b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n"):
        with pytest.raises(m.BadResponse):
            m.parse_response_head_untrusted(bad)
    for named in (b"Content-Length", b"close, transfer-encoding"):
        with pytest.raises(m.BadResponse, match="framing field"):
            m.parse_response_head_untrusted(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: " + named + b"\r\n\r\n")
    h, _ = m.parse_response_head_untrusted(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n")
    with pytest.raises(m.BadResponse):
        m.response_length("GET", h)


def test_upstream_request_replaces_forwarding_and_identity_and_strips_hop_by_hop():
    h = head(b"GET /p?q=1 HTTP/1.1\r\nHost: app.mycompany.net\r\nx-ztna-user: mallory\r\nX-Forwarded-For: 6.6.6.6\r\n"
             b"Forwarded: for=6.6.6.6\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
             b"Cookie: a=1; __Host-ztna_session=SECRET; b=2\r\nAccept: */*\r\n\r\n")
    out = rewrite.upstream_request(h, client="198.51.100.30", host="app.mycompany.net",
                                   identity_header="X-Ztna-User", identity="alice").decode()
    lines = out.split("\r\n")
    assert lines[0] == "GET /p?q=1 HTTP/1.1"
    assert "Host: app.mycompany.net" in lines and "Accept: */*" in lines and "Cookie: a=1; b=2" in lines
    assert "X-Forwarded-For: 198.51.100.30" in lines and "X-Forwarded-Proto: https" in lines
    assert "X-Forwarded-Host: app.mycompany.net" in lines
    assert "Forwarded: for=198.51.100.30;proto=https;host=app.mycompany.net" in lines
    assert "X-Ztna-User: alice" in lines
    for gone in ("mallory", "6.6.6.6", "X-Hop", "Keep-Alive", "TE:", "Connection", "SECRET"):
        assert gone not in out, gone
    assert out.endswith("\r\n\r\n")


def test_websocket_upgrade_is_kept_and_ipv6_client_quoted():
    h = head(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n")
    out = rewrite.upstream_request(h, client="2001:db8::1", host="a", identity_header="X-U", identity="u").decode()
    assert rewrite.is_websocket(h)
    assert "Connection: Upgrade" in out and "Upgrade: websocket" in out and "Sec-WebSocket-Key: k" in out
    assert 'Forwarded: for="[2001:db8::1]";proto=https;host=a' in out


def test_client_response_strips_hop_by_hop_and_our_cookies_keeps_framing():
    h, _ = m.parse_response_head_untrusted(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close, X-A\r\n"
                                           b"X-A: 1\r\nSet-Cookie: __Host-ztna_session=evil\r\nSet-Cookie: app=1\r\n\r\n")
    out = rewrite.client_response(h, close=False).decode()
    assert "Transfer-Encoding: chunked" in out and "Set-Cookie: app=1" in out
    assert "X-A" not in out and "evil" not in out and "Connection" not in out
    assert "Connection: close" in rewrite.client_response(h, close=True).decode()
