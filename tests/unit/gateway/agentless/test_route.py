"""gateway.agentless.route: which job a connection to port 443 is, from peeked ClientHello bytes."""

import ssl

import pytest
from hypothesis import given, settings, strategies as st

from gateway.agentless import route as r
from ztna import tlswire

NAMES = dict(tunnel_names=frozenset({"gateway.mycompany.net"}), apps=frozenset({"app.mycompany.net"}))


def hello(sni):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def decide(data):
    h, need = r.peek_untrusted(data)
    assert need == 0
    return r.route(h, **NAMES)


def test_tunnel_name_goes_to_the_tunnel_and_app_name_to_the_proxy():
    assert decide(hello("gateway.mycompany.net")) == r.Tunnel("gateway.mycompany.net")
    assert decide(hello("APP.mycompany.net")) == r.Web("app.mycompany.net")


def test_unknown_and_missing_sni_get_unrecognized_name():
    got = decide(hello("other.mycompany.net"))
    assert isinstance(got, r.Refuse) and got.alert == tlswire.ALERT_UNRECOGNIZED_NAME and "other.mycompany.net" in got.reason
    got = decide(hello(None))
    assert isinstance(got, r.Refuse) and got.alert == tlswire.ALERT_UNRECOGNIZED_NAME and "no SNI" in got.reason


def test_no_hello_is_a_decode_error_with_the_reason():
    got = r.route(None, error="no whole ClientHello within 10s", **NAMES)
    assert got.alert == tlswire.ALERT_DECODE_ERROR and "within 10s" in got.reason


def test_a_partial_hello_says_how_many_bytes_the_record_needs():
    h = hello("app.mycompany.net")
    for cut in (0, 1, 4, 5, 50, len(h) - 1):
        got, need = r.peek_untrusted(h[:cut])
        assert got is None and need == (5 if cut < 5 else len(h)), cut


def test_not_tls_raises_badtls():
    with pytest.raises(tlswire.BadTLS):
        r.peek_untrusted(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0, max_value=600), noise=st.binary(max_size=64))
def test_fuzz_peek_raises_only_badtls(cut, noise):
    data = hello("app.mycompany.net")[:cut] + noise
    try:
        got, need = r.peek_untrusted(data)
    except tlswire.BadTLS:
        return
    assert got is not None or need > 0
