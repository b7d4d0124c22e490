"""gateway.proxy.metrics: each ended connection's record counted into fixed classes (no root)."""

import pytest

from gateway.proxy.metrics import Counts, handshake_failure, reason_class


@pytest.mark.parametrize("rec, cls", [
    ({"reason": "bank.example.com matches deny bank.example.com"}, "deny-list"),
    ({"reason": "x.org matches no rule; default deny"}, "default"),
    ({"reason": "client 10.0.0.1 is not in a configured client network"}, "client-network"),
    ({"reason": "port 25 is not an allowed TLS port (443)"}, "port"),
    ({"reason": "SNI a differs from the CONNECT name b"}, "sni-mismatch"),
    ({"reason": "a matches allow *.a", "error": "policy reloaded: a matches deny a"}, "reload"),
    ({"reason": "the certificate of u failed verification: self-signed"}, "server-certificate"),
    ({"reason": "something new"}, "other"),
])
def test_reason_classes(rec, cls):
    assert reason_class(rec) == cls


def test_handshake_failures_by_side():
    assert handshake_failure({"reason": "TLS with a failed: SSLError"}) == "server"
    assert handshake_failure({"decision": "allow", "decrypted": True, "error": "SSLError: bad"}) == "client"
    assert handshake_failure({"decision": "allow", "decrypted": True, "tls_client": "TLSv1.3",
                              "error": "ConnectionResetError"}) is None  # after the handshake
    assert handshake_failure({"decision": "allow", "decrypted": False}) is None


def test_counts_and_families():
    c = Counts()
    c.add({"mode": "explicit", "decision": "allow", "bytes_up": 10, "bytes_down": 100})
    c.add({"mode": "explicit", "decision": "deny", "reason": "b matches deny b", "bytes_up": 0, "bytes_down": 0})
    c.add({"mode": "transparent", "decision": "error", "reason": "TLS with c failed: x", "bytes_up": 5,
           "bytes_down": 0})
    fams = {f.name: f for f in c.families(open_connections=2, quic_packets=7)}
    assert dict(fams["ztna_proxy_connections"].samples) == {("explicit", "allow"): 1, ("explicit", "deny"): 1,
                                                           ("transparent", "error"): 1}
    assert dict(fams["ztna_proxy_bytes"].samples) == {("up",): 15, ("down",): 100}
    assert dict(fams["ztna_proxy_refusals"].samples) == {("deny-list",): 1, ("server-tls",): 1}
    assert dict(fams["ztna_proxy_handshake_failures"].samples) == {("server",): 1}
    assert fams["ztna_proxy_quic_datagrams"].samples == [((), 7)]
    assert "ztna_proxy_quic_datagrams" not in {f.name for f in c.families(open_connections=0)}
