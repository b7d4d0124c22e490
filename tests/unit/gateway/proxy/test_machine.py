"""gateway.proxy.machine: playbooks of events and the commands the flow answers with."""

import ssl

import pytest

from gateway.proxy import machine as m
from gateway.proxy.policy import Policy
from ztna import tlswire


def policy(**kw):
    d = {"client_networks": ["198.51.100.0/24"], "allow": ["*.example.com"], "deny": ["blocked.example.com"],
         "no_decrypt": ["bank.example.com"]}
    d.update(kw)
    return Policy.from_dict(d, own_addresses=["198.51.100.1"])


def hello(sni="decrypt.example.com", alpn=("http/1.1",)) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def explicit(**kw):
    f = m.Flow(policy(**kw), m.EXPLICIT, ("198.51.100.10", 40000), now=0.0)
    assert f.start() == []
    return f


def transparent(dst="203.0.113.80", limits=None, **kw):
    f = m.Flow(policy(**kw), m.TRANSPARENT, ("198.51.100.10", 40000), now=0.0, original_dst=(dst, 443),
               limits=limits or m.Limits())
    assert f.start() == []
    return f


def kinds(cmds):
    return [type(c).__name__ for c in cmds]


def test_explicit_exception_reads_the_hello_then_forwards_it_and_splices():
    f = explicit()
    assert f.client_data(b"CONNECT bank.example.com:443 HTTP/1.1\r\n", 0.1) == []
    assert f.client_data(b"Host: bank.example.com:443\r\n\r\n", 0.2) == [m.Resolve("bank.example.com")]
    assert f.resolved(["203.0.113.80"]) == [m.Connect(("203.0.113.80",), 443)]
    assert f.connected("203.0.113.80", 0.3) == [m.SendClient(m.ESTABLISHED)]
    assert f.waiting_for_client and f.deadline == pytest.approx(10.3)
    h = hello("bank.example.com")
    assert f.client_data(h[:7], 0.4) == []
    assert f.client_data(h[7:] + b"early data", 0.5) == [m.SendServer(h + b"early data"), m.Splice()]
    assert f.record["decision"] == "allow" and f.record["decrypted"] is False
    assert f.record["sni"] == "bank.example.com"


def connected_exception(name="bank.example.com"):
    f = explicit()
    f.client_data(f"CONNECT {name}:443 HTTP/1.1\r\n\r\n".encode(), 0.1)
    f.resolved(["203.0.113.80"])
    assert f.connected("203.0.113.80", 0.3) == [m.SendClient(m.ESTABLISHED)]
    return f


def test_explicit_exception_refuses_an_sni_that_is_not_the_connect_name():
    """The do-not-decrypt bypass: CONNECT an exception, then a hello for a blocked site."""
    f = connected_exception()
    cmds = f.client_data(hello("blocked.example.com"), 0.4)
    assert cmds == [m.SendClient(tlswire.alert(tlswire.ALERT_ACCESS_DENIED)), m.Close()]
    assert f.record["decision"] == "deny" and f.record["sni"] == "blocked.example.com"
    assert "differs from the CONNECT name bank.example.com" in f.record["reason"]


def test_explicit_exception_sni_compares_without_case():
    f = connected_exception()
    assert kinds(f.client_data(hello("BANK.example.com"), 0.4)) == ["SendServer", "Splice"]


def test_explicit_exception_refuses_a_hello_without_sni_after_a_named_connect():
    f = connected_exception()
    cmds = f.client_data(hello(None), 0.4)
    assert kinds(cmds) == ["SendClient", "Close"] and f.record["unnamed"] == "no-sni"
    assert f.record["decision"] == "deny"


def test_explicit_exception_without_sni_after_a_connect_to_an_address_splices():
    f = connected_exception_to_address()
    assert kinds(f.client_data(hello(None), 0.4)) == ["SendServer", "Splice"]


def connected_exception_to_address():
    f = explicit(allow=["*.example.com"], default="allow", decrypt=False)
    f.client_data(b"CONNECT 203.0.113.80:443 HTTP/1.1\r\n\r\n", 0.1)
    f.resolved(["203.0.113.80"])
    f.connected("203.0.113.80", 0.3)
    return f


def test_explicit_exception_refuses_bytes_that_are_not_tls():
    f = connected_exception()
    cmds = f.client_data(b"GET / HTTP/1.1\r\nHost: blocked.example.com\r\n\r\n", 0.4)
    assert cmds == [m.Close()] and f.record["decision"] == "deny" and f.record["unnamed"] == "not-tls"


def test_explicit_exception_slow_hello_times_out():
    f = connected_exception()
    assert f.timeout(5.0) == []
    assert f.timeout(10.3) == [m.SendClient(tlswire.alert(tlswire.ALERT_HANDSHAKE_FAILURE)), m.Close()]


def test_explicit_decrypt_waits_for_the_client_hello_then_intercepts():
    f = explicit()
    f.client_data(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
    f.resolved(["203.0.113.80"])
    assert f.connected("203.0.113.80", 0.3) == [m.SendClient(m.ESTABLISHED)]
    assert f.waiting_for_client and f.deadline == pytest.approx(10.3)
    h = hello()
    assert f.client_data(h[:50], 0.4) == []
    cmds = f.client_data(h[50:], 0.5)
    assert kinds(cmds) == ["Intercept"] and cmds[0].name == "decrypt.example.com" and cmds[0].hello.raw == h
    assert f.record["decrypted"] is True


def test_explicit_decrypt_sni_must_match_connect_name():
    f = explicit()
    f.client_data(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
    f.resolved(["203.0.113.80"])
    f.connected("203.0.113.80", 0.3)
    cmds = f.client_data(hello("other.example.com"), 0.4)
    assert cmds == [m.SendClient(tlswire.alert(tlswire.ALERT_ACCESS_DENIED)), m.Close()]
    assert f.record["decision"] == "deny"


def test_explicit_denied_gets_403_with_reason_and_nothing_is_resolved():
    f = explicit()
    cmds = f.client_data(b"CONNECT blocked.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
    assert kinds(cmds) == ["SendClient", "Close"]
    assert cmds[0].data.startswith(b"HTTP/1.1 403 ") and b"matches deny blocked.example.com" in cmds[0].data


@pytest.mark.parametrize("raw,status", [
    (b"CONNECT decrypt.example.com HTTP/1.1\r\n\r\n", b"400"),
    (b"CONNECT decrypt.example.com:8443 HTTP/1.1\r\n\r\n", b"403"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
    (b"BREW http://a.example.com/ HTTP/1.1\r\n\r\n", b"405"),
    (b"CONNECT 203.0.113.80:443 HTTP/1.1\r\n\r\n", b"403"),
    (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", b"400"),
    (b"CONNECT a.example.com:443 HTTP/1.1\r\n\r\n\x16\x03\x01", b"400"),
])
def test_explicit_bad_requests(raw, status):
    cmds = explicit().client_data(raw, 0.1)
    assert kinds(cmds) == ["SendClient", "Close"] and cmds[0].data.split(b" ")[1] == status


def test_explicit_huge_head_is_refused_before_the_blank_line():
    f = explicit()
    cmds = []
    for _ in range(40):
        cmds = f.client_data(b"X-Pad: " + b"p" * 1000 + b"\r\n", 0.1) if f.waiting_for_client else cmds
        if cmds:
            break
    assert cmds[0].data.startswith(b"HTTP/1.1 414") or cmds[0].data.startswith(b"HTTP/1.1 431")


def test_slowloris_times_out_with_408():
    f = explicit()
    f.client_data(b"CONN", 1.0)
    assert f.timeout(5.0) == []
    cmds = f.timeout(10.0)
    assert cmds[0].data.startswith(b"HTTP/1.1 408") and f.record["decision"] == "error"


def test_plain_http_rewrites_and_splices():
    f = explicit()
    f.client_data(b"GET http://web.example.com/x HTTP/1.1\r\nHost: web.example.com\r\nProxy-Connection: keep-alive\r\n\r\n", 0.1)
    f.resolved(["203.0.113.80"])
    cmds = f.connected("203.0.113.80", 0.2)
    assert kinds(cmds) == ["SendServer", "Splice"]
    assert cmds[0].data.startswith(b"GET /x HTTP/1.1\r\nHost: web.example.com\r\n") and b"Proxy-Connection" not in cmds[0].data


def test_client_outside_networks_is_refused():
    f = m.Flow(policy(), m.EXPLICIT, ("203.0.113.9", 1), now=0.0)
    cmds = f.start()
    assert cmds[0].data.startswith(b"HTTP/1.1 403") and f.record["decision"] == "deny"
    f = m.Flow(policy(), m.TRANSPARENT, ("203.0.113.9", 1), now=0.0, original_dst=("203.0.113.80", 443))
    assert f.start() == [m.Close()]


@pytest.mark.parametrize("addrs", [["127.0.0.1"], ["198.51.100.1"], [], ["169.254.0.9"]])
def test_forbidden_or_no_addresses_never_connect(addrs):
    f = explicit()
    f.client_data(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
    cmds = f.resolved(addrs)
    assert kinds(cmds) == ["SendClient", "Close"] and cmds[0].data.startswith(b"HTTP/1.1 502")


def test_mixed_addresses_connect_only_to_allowed_ones():
    f = explicit()
    f.client_data(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
    assert f.resolved(["127.0.0.1", "203.0.113.80"]) == [m.Connect(("203.0.113.80",), 443)]


def test_transparent_exception_forwards_the_same_hello():
    f = transparent()
    h = hello("bank.example.com")
    assert f.client_data(h[:10], 0.1) == []
    assert f.client_data(h[10:], 0.2) == [m.Resolve("bank.example.com")]
    assert f.resolved(["203.0.113.80"]) == [m.Connect(("203.0.113.80",), 443)]
    assert f.connected("203.0.113.80", 0.3) == [m.SendServer(h), m.Splice()]


def test_transparent_connects_where_the_name_resolves_not_where_the_client_dialled():
    f = transparent(dst="203.0.113.99")
    f.client_data(hello("bank.example.com"), 0.1)
    assert f.resolved(["203.0.113.80"]) == [m.Connect(("203.0.113.80",), 443)]
    assert "203.0.113.99" in f.record["redirected"]


def test_transparent_decrypt_and_block_page():
    f = transparent()
    f.client_data(hello(), 0.1)
    f.resolved(["203.0.113.80"])
    assert kinds(f.connected("203.0.113.80", 0.2)) == ["Intercept"]
    f = transparent()
    cmds = f.client_data(hello("blocked.example.com"), 0.1)
    assert kinds(cmds) == ["Intercept"] and cmds[0].page.startswith(b"HTTP/1.1 403 ") and b"deny" in cmds[0].page


def test_transparent_block_without_decryption_is_an_alert():
    f = transparent(decrypt=False)
    cmds = f.client_data(hello("blocked.example.com"), 0.1)
    assert cmds == [m.SendClient(tlswire.alert(tlswire.ALERT_ACCESS_DENIED)), m.Close()]


@pytest.mark.parametrize("action", [m.BLOCK, m.PASSTHROUGH])
def test_no_sni_and_not_tls_actions(action):
    lim = m.Limits(on_no_sni=action, on_not_tls=action)
    f = transparent(limits=lim)
    cmds = f.client_data(hello(None), 0.1)
    if action == m.BLOCK:
        assert kinds(cmds) == ["SendClient", "Close"] and f.record["unnamed"] == "no-sni"
    else:
        assert cmds == [m.Connect(("203.0.113.80",), 443)]
        assert kinds(f.connected("203.0.113.80", 0.2)) == ["SendServer", "Splice"]
    f = transparent(limits=lim)
    cmds = f.client_data(b"GET / HTTP/1.1\r\n\r\n", 0.1)
    if action == m.BLOCK:
        assert cmds == [m.Close()] and f.record["decision"] == "deny"
    else:
        assert cmds == [m.Connect(("203.0.113.80",), 443)]
        assert f.connected("203.0.113.80", 0.2) == [m.SendServer(b"GET / HTTP/1.1\r\n\r\n"), m.Splice()]


def test_passthrough_never_to_a_forbidden_dialled_address():
    f = transparent(dst="127.0.0.1", limits=m.Limits(on_no_sni=m.PASSTHROUGH))
    cmds = f.client_data(hello(None), 0.1)
    assert kinds(cmds) == ["SendClient", "Close"]


def test_truncated_hello_then_eof_and_garbage_hello():
    f = transparent()
    f.client_data(hello()[:40], 0.1)
    assert f.client_eof(0.2) == [m.Close()] and f.record["decision"] == "error"
    f = transparent()
    cmds = f.client_data(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", 0.1)
    assert kinds(cmds) == ["SendClient", "Close"]


def test_hello_timeout_alerts():
    f = transparent()
    f.client_data(hello()[:3], 0.1)
    cmds = f.timeout(11.0)
    assert cmds == [m.SendClient(tlswire.alert(tlswire.ALERT_HANDSHAKE_FAILURE)), m.Close()]


def test_upstream_failures():
    f = transparent()
    f.client_data(hello(), 0.1)
    assert kinds(f.resolve_failed("NXDOMAIN")) == ["SendClient", "Close"]
    f = explicit()
    f.client_data(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
    f.resolved(["203.0.113.80"])
    cmds = f.connect_failed("refused")
    assert cmds[0].data.startswith(b"HTTP/1.1 502")


def test_host_matches():
    from gateway.proxy import http1

    def head(raw):
        return http1.parse_request_head_untrusted(raw)[0]

    assert m.host_matches(head(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n"), "a.example.com") is None
    assert m.host_matches(head(b"GET / HTTP/1.1\r\nHost: A.example.com:443\r\n\r\n"), "a.example.com") is None
    assert m.host_matches(head(b"GET / HTTP/1.1\r\nHost: b.example.com\r\n\r\n"), "a.example.com")
    assert m.host_matches(head(b"GET / HTTP/1.1\r\n\r\n"), "a.example.com")
    assert m.host_matches(head(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: a.example.com\r\n\r\n"), "a.example.com")
    assert m.host_matches(head(b"GET https://b.example.com/ HTTP/1.1\r\nHost: a.example.com\r\n\r\n"), "a.example.com")


# ---- the decrypted phase: ALPN, the server's TLS failing, the requests inside ---------------------
def intercepting(sni="decrypt.example.com", **kw):
    f = explicit(**kw)
    f.client_data(f"CONNECT {sni}:443 HTTP/1.1\r\n\r\n".encode(), 0.1)
    f.resolved(["203.0.113.80"])
    f.connected("203.0.113.80", 0.3)
    cmds = f.client_data(hello(sni), 0.4)
    assert kinds(cmds) == ["Intercept"] and cmds[0].page is None
    return f


@pytest.mark.parametrize("mode", ["explicit", "transparent"])
def test_a_client_offering_only_h2_gets_no_application_protocol(mode):
    h = hello(alpn=("h2",))
    if mode == "explicit":
        f = explicit()
        f.client_data(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\n\r\n", 0.1)
        f.resolved(["203.0.113.80"])
        f.connected("203.0.113.80", 0.3)
        cmds = f.client_data(h, 0.4)
    else:
        f = transparent()
        cmds = f.client_data(h, 0.1)  # refused before anything is resolved or connected
    assert cmds == [m.SendClient(tlswire.alert(tlswire.ALERT_NO_APPLICATION_PROTOCOL)), m.Close()]
    assert "client offers only h2" in f.record["reason"] and f.record["decrypted"] is False


def test_h2_with_http1_fallback_and_no_alpn_are_decrypted():
    for alpn in (("h2", "http/1.1"), ()):
        f = transparent()
        assert kinds(f.client_data(hello(alpn=alpn), 0.1)) == ["Resolve"]


def test_the_server_failing_tls_gives_the_client_a_502_page_that_says_why():
    f = intercepting()
    cmds = f.upstream_tls_failed("SSLError: bad", verify_message="self-signed certificate")
    assert kinds(cmds) == ["SendClient", "Close"] and cmds[0].data.startswith(b"HTTP/1.1 502 ")
    assert b"decrypt.example.com failed verification: self-signed certificate" in cmds[0].data
    assert f.record["decision"] == "error" and "verification" in f.record["reason"]
    f = intercepting()
    cmds = f.upstream_tls_failed("ConnectionResetError: reset")
    assert b"TLS with decrypt.example.com failed: ConnectionResetError: reset" in cmds[0].data


def test_inner_requests_go_on_in_order_and_are_counted():
    f = intercepting()
    req = b"POST /a HTTP/1.1\r\nHost: decrypt.example.com\r\nContent-Length: 5\r\n\r\nhel"
    assert f.decrypted_request(req) == [m.SendServer(req[:-3]), m.SendServer(b"hel")]
    nxt = b"GET /b HTTP/1.1\r\nHost: decrypt.example.com:443\r\n\r\n"
    assert f.decrypted_request(b"lo" + nxt) == [m.SendServer(b"lo"), m.SendServer(nxt)]
    assert f.record["requests"] == 2 and f.record["decision"] == "allow"


def test_an_inner_request_for_another_host_gets_421_after_what_went_before():
    f = intercepting()
    ok = b"GET / HTTP/1.1\r\nHost: decrypt.example.com\r\n\r\n"
    bad = b"GET / HTTP/1.1\r\nHost: bank.example.com\r\n\r\n"
    cmds = f.decrypted_request(ok + bad)
    assert kinds(cmds) == ["SendServer", "SendClient", "Close"] and cmds[0] == m.SendServer(ok)
    assert cmds[1].data.startswith(b"HTTP/1.1 421 ") and f.record["decision"] == "deny"
    assert "differs from the TLS name" in f.record["reason"]


def test_a_malformed_inner_request_is_refused():
    f = intercepting()
    cmds = f.decrypted_request(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
                               b"Host: decrypt.example.com\r\n\r\n")
    assert kinds(cmds) == ["SendClient", "Close"] and cmds[0].data.startswith(b"HTTP/1.1 400 ")
    assert f.record["decision"] == "error" and f.record["reason"].startswith("inner request:")
