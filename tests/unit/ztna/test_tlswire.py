"""ztna.tlswire: real ClientHellos from OpenSSL, cut, split, re-fragmented and fuzzed."""

import datetime as dt
import ssl
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztna import pki, tlswire


def real_hello(sni="decrypt.example.com", alpn=("h2", "http/1.1"), max_version=None) -> bytes:
    """The first flight of a real OpenSSL client, taken from a memory BIO (no socket)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if max_version:
        ctx.maximum_version = max_version
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


HELLO = real_hello()


def refragment(hello: bytes, sizes: list[int]) -> bytes:
    """The same handshake message carried in several records of the given sizes."""
    recs, _ = tlswire.records_untrusted(hello)
    body = b"".join(r.fragment for r in recs)
    out, pos = b"", 0
    for n in sizes:
        if pos >= len(body):
            break
        part = body[pos:pos + n]
        out += struct.pack("!BHH", 22, 0x0301, len(part)) + part
        pos += n
    if pos < len(body):
        out += struct.pack("!BHH", 22, 0x0301, len(body) - pos) + body[pos:]
    return out


def test_real_hello_sni_alpn_versions():
    h = tlswire.parse_client_hello_untrusted(HELLO)
    assert h.sni == "decrypt.example.com"
    assert h.alpn == ("h2", "http/1.1")
    assert 0x0304 in h.supported_versions
    assert h.raw == HELLO and not h.ech


def test_hello_without_sni_or_alpn():
    h = tlswire.parse_client_hello_untrusted(real_hello(sni=None, alpn=()))
    assert h.sni is None and h.alpn == ()


def test_every_prefix_is_incomplete_never_an_error():
    for i in range(len(HELLO)):
        assert tlswire.parse_client_hello_untrusted(HELLO[:i]) is None, i


def test_byte_by_byte_buffer_gives_the_same_hello_and_keeps_the_rest():
    buf = tlswire.ClientHelloBuffer()
    got = None
    for b in HELLO + b"\x17\x03\x03":
        got = buf.feed(bytes([b])) or got
    assert got is not None and got.raw == HELLO and got.sni == "decrypt.example.com"
    assert buf.rest == b"\x17\x03\x03"


@pytest.mark.parametrize("sizes", [[1] * 4000, [4, 5], [100, 1, 1, 50], [17] * 300])
def test_hello_split_over_many_records(sizes):
    data = refragment(HELLO, sizes)
    h = tlswire.parse_client_hello_untrusted(data)
    assert h.sni == "decrypt.example.com" and h.raw == data
    buf = tlswire.ClientHelloBuffer()
    for i in range(0, len(data), 7):
        got = buf.feed(data[i:i + 7])
    assert got.sni == "decrypt.example.com"


def test_not_tls_is_named():
    with pytest.raises(tlswire.BadTLS) as e:
        tlswire.parse_client_hello_untrusted(b"GET / HTTP/1.1\r\n\r\n")
    assert e.value.kind == "not-tls"


def test_size_cap():
    with pytest.raises(tlswire.BadTLS) as e:
        tlswire.parse_client_hello_untrusted(HELLO, max_size=100)
    assert e.value.kind == "too-large"
    # a huge declared length is refused before the bytes arrive
    bogus = struct.pack("!BHH", 22, 0x0301, 8) + bytes([1]) + (10**6).to_bytes(3, "big") + b"\x03\x03\x00\x00"
    with pytest.raises(tlswire.BadTLS):
        tlswire.parse_client_hello_untrusted(bogus)


def test_server_hello_first_is_refused():
    rec = struct.pack("!BHH", 22, 0x0303, 8) + bytes([2, 0, 0, 4]) + b"\x03\x03\x00\x00"
    with pytest.raises(tlswire.BadTLS):
        tlswire.parse_client_hello_untrusted(rec)


def _with_extension(hello: bytes, ext_type: int, data: bytes) -> bytes:
    recs, _ = tlswire.records_untrusted(hello)
    body = recs[0].fragment[4:]
    # legacy_version, random, session id, suites, compression, then the extensions vector
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + struct.unpack_from("!H", body, pos)[0]
    pos += 1 + body[pos]
    ext_len = struct.unpack_from("!H", body, pos)[0]
    exts = body[pos + 2:pos + 2 + ext_len] + struct.pack("!HH", ext_type, len(data)) + data
    body = body[:pos] + struct.pack("!H", len(exts)) + exts
    msg = bytes([1]) + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", 22, 0x0301, len(msg)) + msg


def test_ech_is_detected():
    h = tlswire.parse_client_hello_untrusted(_with_extension(HELLO, tlswire.EXT_ECH, b"\x00\x01"))
    assert h.ech and h.sni == "decrypt.example.com"


def test_duplicate_extension_refused():
    with pytest.raises(tlswire.BadTLS):
        tlswire.parse_client_hello_untrusted(_with_extension(HELLO, tlswire.EXT_ALPN, b"\x00\x03\x02h2"))


def test_alert_record():
    assert tlswire.alert(tlswire.ALERT_ACCESS_DENIED) == b"\x15\x03\x03\x00\x02\x02\x31"


def test_certificate_of_a_tls12_server_flight():
    now = dt.datetime.now(dt.timezone.utc)
    ca = pki.new_ca("t", now=now)
    leaf = pki.issue(ca, "decrypt.example.com", kind="server", now=now, dns_names=["decrypt.example.com"])
    import os
    import tempfile
    d = tempfile.mkdtemp()
    c, k = pki.save(leaf, d, "leaf")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(c, k)
    sctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = sctx.wrap_bio(sin, sout, server_side=True)
    sin.write(real_hello(max_version=ssl.TLSVersion.TLSv1_2))
    with pytest.raises(ssl.SSLWantReadError):
        srv.do_handshake()
    flight = sout.read()
    recs, _ = tlswire.records_untrusted(flight)
    msgs = tlswire.handshake_messages_untrusted(recs)
    kinds = [t for t, _ in msgs]
    assert kinds[0] == tlswire.HS_SERVER_HELLO and tlswire.HS_CERTIFICATE in kinds
    assert tlswire.server_hello_version_untrusted(msgs[0][1]) == 0x0303
    ders = tlswire.certificates_untrusted(dict(msgs)[tlswire.HS_CERTIFICATE])
    from cryptography import x509
    assert x509.load_der_x509_certificate(ders[0]) == leaf.cert
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


# ---- fuzzing: only BadTLS may escape, and a whole hello is always found ------------------------
def _parse(data):
    try:
        return tlswire.parse_client_hello_untrusted(data)
    except tlswire.BadTLS:
        return "bad"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(HELLO)), noise=st.binary(max_size=600))
def test_fuzz_cut_then_noise(cut, noise):
    got = _parse(HELLO[:cut] + noise)
    assert got is None or got == "bad" or isinstance(got, tlswire.ClientHello)


@settings(max_examples=300, deadline=None)
@given(noise=st.binary(max_size=300))
def test_fuzz_whole_hello_then_noise_keeps_the_hello(noise):
    buf = tlswire.ClientHelloBuffer()
    h = buf.feed(HELLO + noise)
    assert h.sni == "decrypt.example.com" and buf.rest == noise


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0, max_value=len(HELLO) - 1), byte=st.integers(0, 255))
def test_fuzz_one_byte_flipped(pos, byte):
    data = bytearray(HELLO)
    data[pos] = byte
    got = _parse(bytes(data))
    assert got is None or got == "bad" or isinstance(got, tlswire.ClientHello)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000))
def test_fuzz_random_bytes_fed_in_pieces(data):
    buf = tlswire.ClientHelloBuffer()
    try:
        for i in range(0, len(data), 13):
            buf.feed(data[i:i + 13])
    except tlswire.BadTLS as exc:
        assert exc.kind in ("not-tls", "too-large", "malformed")
