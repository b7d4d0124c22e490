import datetime as dt
import os
import ssl
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from ztna import pki

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_ca_and_leaf_are_p256_and_chain(tmp_path):
    ca = pki.new_ca("test CA", now=NOW)
    leaf = pki.issue(ca, "alice", kind="agent", now=NOW)
    assert isinstance(leaf.key.curve, ec.SECP256R1)
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert pki.identity_of(leaf.cert) == "alice"
    assert leaf.cert.issuer == ca.cert.subject
    ca.key.public_key().verify(leaf.cert.signature, leaf.cert.tbs_certificate_bytes, ec.ECDSA(leaf.cert.signature_hash_algorithm))


def test_leaf_key_never_equals_ca_key():
    ca = pki.new_ca("test CA", now=NOW)
    with pytest.raises(pki.PKIError, match="never equal"):
        pki.issue(ca, "x", kind="server", now=NOW, key=ca.key)


def test_keys_written_0600_and_loadable(tmp_path):
    ca = pki.new_ca("test CA", now=NOW)
    cert_path, key_path = pki.save(ca, tmp_path, "ca")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    again = pki.load(tmp_path, "ca")
    assert again.cert == ca.cert


def test_expired_leaf_is_expired():
    ca = pki.new_ca("test CA", now=NOW)
    leaf = pki.issue(ca, "old", kind="agent", now=NOW, days=-1)
    assert leaf.cert.not_valid_after_utc < NOW


def test_unknown_kind_and_bad_ip_are_clear_errors():
    ca = pki.new_ca("test CA", now=NOW)
    with pytest.raises(pki.PKIError, match="unknown certificate kind"):
        pki.issue(ca, "x", kind="wizard", now=NOW)
    with pytest.raises(pki.PKIError, match="not an IP"):
        pki.issue(ca, "x", kind="server", now=NOW, ips=["nope"])


def test_missing_files_say_what_to_run(tmp_path):
    with pytest.raises(pki.PKIError, match="ztna pki init"):
        pki.load(tmp_path, "ca")


def test_openssl_verifies_the_chain_and_the_name(tmp_path):
    """A real TLS 1.3 handshake in memory: the client checks the leaf against the CA and the name."""
    now = pki.utcnow()
    ca = pki.new_ca("test CA", now=now)
    pki.save(ca, tmp_path, "ca")
    pki.save(pki.issue(ca, "srv", kind="server", now=now, dns_names=["srv.example"]), tmp_path, "srv")

    def handshake(server_name):
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(tmp_path / "srv.pem", tmp_path / "srv.key")
        cctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = cctx.wrap_bio(c_in, c_out, server_hostname=server_name)
        server = sctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        return client.version()

    assert handshake("srv.example") == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        handshake("other.example")
    other = pki.new_ca("another CA", now=now)
    pki.save(pki.issue(other, "srv", kind="server", now=now, dns_names=["srv.example"]), tmp_path, "srv")
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake("srv.example")
