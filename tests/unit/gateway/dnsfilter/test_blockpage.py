import ssl

from cryptography.x509.oid import ExtensionOID

from gateway.dnsfilter.blockpage import CertCache, describe, host_of, render_page, server_context, blocked_anywhere
from gateway.dnsfilter.config import from_dict
from gateway.dnsfilter.engine import Engine
from ztna import pki

DOC = {"server": {"upstreams": ["203.0.113.53"]}, "blockpage": {"https_port": 0},
       "categories": {"domains": {"malware.bad.example": "malware"}},
       "policy": [{"name": "office", "networks": ["198.51.100.0/24"], "block_categories": ["malware"]}]}


def test_host_header():
    assert host_of(b"GET / HTTP/1.1\r\nHost: Malware.Bad.Example:8080\r\n\r\n") == "malware.bad.example"
    assert host_of(b"GET / HTTP/1.1\r\nhost:x.example.\r\n\r\n") == "x.example"
    assert host_of(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n") == ""
    assert host_of(b"GET / HTTP/1.1\r\nHost: a..b\r\n\r\n") == ""


def test_page_says_name_reason_policy_and_escapes():
    status, body = render_page("<script>.example", {"reason": "malware", "column": "security", "matched": "m",
                                                    "policy": "office", "link": "a -> b"})
    assert status == 403 and "&lt;script&gt;" in body and "<script>" not in body
    assert "malware (security)" in body and "office" in body and "a -&gt; b" in body
    assert render_page("www.good.example", None)[0] == 404


def test_reason_from_recent_blocks_else_from_policy():
    eng = Engine(from_dict(DOC))
    assert describe(eng, "198.51.100.10", "x.malware.bad.example")["reason"] == "malware"
    assert describe(eng, "198.51.100.10", "www.good.example") is None
    assert describe(eng, "203.0.113.1", "malware.bad.example") is None      # not served
    eng.recent_blocks[("198.51.100.10", "shop.good.example")] = {"name": "shop.good.example", "reason": "corp",
                                                                  "column": "destination-list", "link": "x -> y"}
    assert describe(eng, "198.51.100.10", "shop.good.example")["link"] == "x -> y"
    assert blocked_anywhere(eng, "shop.good.example") and blocked_anywhere(eng, "malware.bad.example")
    assert not blocked_anywhere(eng, "bank.example")


def test_leaves_on_the_fly_each_with_its_own_key_cached():
    ca = pki.new_ca("test CA", now=pki.utcnow())
    default = server_context(pki.issue(ca, "bp", kind="server", now=pki.utcnow(), ips=["192.0.2.80"]), ca)
    certs = CertCache(ca, default)
    a = certs.context_for("malware.bad.example")
    assert certs.context_for("malware.bad.example") is a and certs.issued == 1
    certs.context_for("listed.bad.example")
    assert certs.issued == 2
    assert isinstance(a, ssl.SSLContext)
    # each leaf has its own key, never the CA's, names the blocked host, and chains to the CA
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    def pub(c):
        return c.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    a_cert, b_cert = certs.certs["malware.bad.example"], certs.certs["listed.bad.example"]
    assert len({pub(a_cert), pub(b_cert), pub(ca.cert)}) == 3
    san = a_cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert san.get_values_for_type(x509.DNSName) == ["malware.bad.example"]
    a_cert.verify_directly_issued_by(ca.cert)
