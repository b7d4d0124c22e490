"""gateway.proxy.http1: request heads under caps, authorities, rewriting and request streams."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy import http1
from gateway.proxy.http1 import BadRequest

CONNECT = b"CONNECT decrypt.example.com:443 HTTP/1.1\r\nHost: decrypt.example.com:443\r\nUser-Agent: curl\r\n\r\n"


def test_connect_head_whole_and_byte_by_byte():
    head, n = http1.parse_request_head_untrusted(CONNECT + b"rest")
    assert (head.method, head.target, head.version, n) == ("CONNECT", "decrypt.example.com:443", "HTTP/1.1", len(CONNECT))
    assert head.header("user-agent") == "curl"
    for i in range(len(CONNECT)):
        assert http1.parse_request_head_untrusted(CONNECT[:i]) is None


@pytest.mark.parametrize("raw,status", [
    (b"CONNECT\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/2.0\r\n\r\n", 505),
    (b"CONNECT a:443 SPDY\r\n\r\n", 400),
    (b"CONNECT  a:443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\n folded: x\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
    (b"G\x00T / HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a:443 HTTP/1.1\nHost: a\n\n", 400),
])
def test_malformed_heads(raw, status):
    with pytest.raises(BadRequest) as e:
        http1.parse_request_head_untrusted(raw)
    assert e.value.status == status


def test_caps():
    with pytest.raises(BadRequest) as e:
        http1.parse_request_head_untrusted(b"CONNECT " + b"a" * 9000)
    assert e.value.status == 414
    big = b"CONNECT a:443 HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 4000 + b"\r\n"
    with pytest.raises(BadRequest) as e:
        http1.parse_request_head_untrusted(big * 5)
    assert e.value.status == 431
    many = b"CONNECT a:443 HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n"
    with pytest.raises(BadRequest) as e:
        http1.parse_request_head_untrusted(many)
    assert e.value.status == 431


@pytest.mark.parametrize("text,want", [("a.com:443", ("a.com", 443)), ("A.COM.:8443", ("a.com", 8443)),
                                       ("[2001:db8::1]:443", ("2001:db8::1", 443))])
def test_authority(text, want):
    assert http1.split_authority(text) == want


@pytest.mark.parametrize("text", ["a.com", "a.com:", "a.com:0", "a.com:99999", "a.com:x", ":443", "a:b:443", "[::1"])
def test_bad_authority(text):
    with pytest.raises(BadRequest):
        http1.split_authority(text)


def test_absolute_target_and_rewrite():
    assert http1.absolute_target("http://Web.Example.com:8080/p?q=1") == ("web.example.com", 8080, "/p?q=1")
    assert http1.absolute_target("http://a.com") == ("a.com", 80, "/")
    assert http1.absolute_target("http://a.com?x") == ("a.com", 80, "/?x")
    for bad in ("https://a.com/", "/relative", "http://u@a.com/"):
        with pytest.raises(BadRequest):
            http1.absolute_target(bad)
    head, _ = http1.parse_request_head_untrusted(
        b"GET http://a.com/x HTTP/1.1\r\nHost: evil.com\r\nProxy-Authorization: secret\r\nConnection: keep-alive, X-Drop\r\n"
        b"X-Drop: 1\r\nAccept: */*\r\n\r\n")
    out = http1.origin_request(head, "/x", host_header="a.com")
    assert out.startswith(b"GET /x HTTP/1.1\r\nHost: a.com\r\n")
    for gone in (b"evil.com", b"secret", b"X-Drop", b"keep-alive"):
        assert gone not in out
    assert b"Accept: */*" in out and out.endswith(b"Connection: close\r\n\r\n")


def test_smuggling_framing_refused():
    for raw in (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"):
        head, _ = http1.parse_request_head_untrusted(raw)
        with pytest.raises(BadRequest):
            http1.body_length(head)


STREAM = (b"POST /a HTTP/1.1\r\nHost: a.com\r\nContent-Length: 5\r\n\r\nhello"
          b"POST /b HTTP/1.1\r\nHost: b.com\r\nTransfer-Encoding: chunked\r\n\r\n"
          b"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n"
          b"GET /c HTTP/1.1\r\nHost: c.com\r\n\r\n")


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_request_stream_finds_every_head_and_forwards_every_byte(step):
    s = http1.RequestStream()
    events = []
    for i in range(0, len(STREAM), step):
        events += s.feed(STREAM[i:i + step])
    hosts = [v.header("host") for k, v in events if k == "head"]
    assert hosts == ["a.com", "b.com", "c.com"]
    assert b"".join(v for k, v in events if k == "bytes") == STREAM


def test_request_stream_bad_chunk():
    s = http1.RequestStream()
    with pytest.raises(BadRequest):
        s.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_heads_only_raise_bad_request(data):
    try:
        http1.parse_request_head_untrusted(data)
        http1.RequestStream().feed(data)
    except BadRequest as exc:
        assert 400 <= exc.status < 600


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, len(CONNECT)), noise=st.binary(max_size=200))
def test_fuzz_cut_connect_plus_noise(cut, noise):
    try:
        http1.parse_request_head_untrusted(CONNECT[:cut] + noise)
    except BadRequest:
        pass


def test_byte_class_tables_match_the_naive_checks():
    """The translate tables used by the parser accept exactly the bytes the RFC 9110 rules do."""
    import random

    rng = random.Random(9)
    for _ in range(20000):
        b = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 5)))
        assert (not all(c in http1._TOKEN for c in b)) == bool(b.translate(None, http1._TOKEN_BYTES))
        assert any(c <= 0x20 or c >= 0x7F for c in b) == bool(b.translate(None, http1._TARGET_BYTES))
        assert any((c < 0x20 and c != 0x09) or c == 0x7F for c in b) == bool(b.translate(None, http1._VALUE_BYTES))
    for c in range(256):  # every single byte, too
        b = bytes([c])
        assert (c not in http1._TOKEN) == bool(b.translate(None, http1._TOKEN_BYTES))
        assert (c <= 0x20 or c >= 0x7F) == bool(b.translate(None, http1._TARGET_BYTES))
        assert ((c < 0x20 and c != 0x09) or c == 0x7F) == bool(b.translate(None, http1._VALUE_BYTES))


@pytest.mark.parametrize("named", ["content-length", "Transfer-Encoding", "host"])
def test_connection_naming_a_framing_or_routing_field_is_refused(named):
    # Dropping a field the client lists in Connection would let it remove Content-Length (the
    # origin then reads the body as a second request) or Host: refused, not obeyed.
    head, _ = http1.parse_request_head_untrusted(
        f"POST http://a.com/x HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, {named}\r\n"
        f"Content-Length: 5\r\n\r\n".encode())
    with pytest.raises(BadRequest) as e:
        http1.origin_request(head, "/x", host_header="a.com")
    assert e.value.status == 400 and named.lower() in str(e.value)
