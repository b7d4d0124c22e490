"""ztna/crl.py: making the CRL, reading it back, and the watch that keeps the old one on bad input."""

import os

import pytest

from ztna import crl, pki

NOW = pki.utcnow()


@pytest.fixture(scope="module")
def ca():
    return pki.new_ca("test CA", now=NOW)


def leaf(ca, name="alice"):
    return pki.issue(ca, name, kind="agent", now=NOW).cert


def test_revoke_adds_the_serial_once_and_keeps_the_others(ca):
    a, b = leaf(ca), leaf(ca, "bob")
    first, new = crl.revoke(ca, None, a, now=NOW)
    assert new and crl.parse(first, ca.cert) == {a.serial_number}
    second, new = crl.revoke(ca, first, b, now=NOW)
    assert new and crl.parse(second, ca.cert) == {a.serial_number, b.serial_number}
    again, new = crl.revoke(ca, second, a, now=NOW)
    assert not new and crl.parse(again, ca.cert) == {a.serial_number, b.serial_number}


def test_a_crl_of_another_ca_or_with_a_bad_signature_is_refused(ca):
    other = pki.new_ca("other CA", now=NOW)
    foreign = crl.render(other, {1: NOW}, now=NOW)
    with pytest.raises(crl.CRLError, match="not by the CA"):
        crl.parse(foreign, ca.cert)
    twin = pki.new_ca("test CA", now=NOW)  # same name, other key: the signature gives it away
    with pytest.raises(crl.CRLError, match="signature is not the CA's"):
        crl.parse(crl.render(twin, {1: NOW}, now=NOW), ca.cert)
    with pytest.raises(crl.CRLError, match="not a PEM certificate revocation list"):
        crl.parse(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n", ca.cert)
    with pytest.raises(crl.CRLError, match="not by this CA"):
        crl.revoke(ca, None, leaf(other), now=NOW)


def test_watch_reads_changes_and_keeps_the_old_list_when_the_file_is_bad(ca, tmp_path):
    path = tmp_path / "crl.pem"
    a, b = leaf(ca), leaf(ca, "bob")
    path.write_bytes(crl.render(ca, {}, now=NOW))
    w = crl.CrlWatch(path, ca.cert)
    msg, added = w.poll()
    assert "0 revoked" in msg and added == set()
    assert w.poll() is None  # unchanged: not read again
    data, _ = crl.revoke(ca, path.read_bytes(), a, now=NOW)
    pki.write_pem(path, data, private=False)  # a rename: a new inode
    msg, added = w.poll()
    assert added == {a.serial_number} and w.revoked(a.serial_number) and not w.revoked(b.serial_number)
    for bad, why in ((b"not a crl at all", "not a PEM"), (crl.render(pki.new_ca("x", now=NOW), {b.serial_number: NOW},
                                                                         now=NOW), "not by the CA")):
        path.write_bytes(bad)
        os.utime(path, ns=(1, os.stat(path).st_mtime_ns + 1_000_000))
        msg, added = w.poll()
        assert msg.startswith("error") and why in msg and "stay in force" in msg, msg
        assert added == set() and w.revoked(a.serial_number) and not w.revoked(b.serial_number)
    path.unlink()
    msg, _ = w.poll()
    assert msg.startswith("error") and "cannot read it" in msg and w.revoked(a.serial_number)


def test_past_next_update_is_still_enforced_and_said(ca, tmp_path):
    import datetime as dt

    path = tmp_path / "crl.pem"
    a = leaf(ca)
    path.write_bytes(crl.render(ca, {a.serial_number: NOW}, now=NOW - dt.timedelta(days=400)))
    w = crl.CrlWatch(path, ca.cert)
    msg, added = w.poll()
    assert "past its next update" in msg and added == {a.serial_number}


def test_pki_revoke_and_crl_commands(tmp_path):
    from click.testing import CliRunner

    from ztna.pki_cli import pki_group

    r = CliRunner()
    assert r.invoke(pki_group, ["init", "--dir", str(tmp_path)]).exit_code == 0
    assert r.invoke(pki_group, ["issue", "--dir", str(tmp_path), "--name", "alice", "--kind", "agent"]).exit_code == 0
    out = r.invoke(pki_group, ["crl", "--dir", str(tmp_path)])
    assert out.exit_code == 0 and "0 revoked" in out.output
    out = r.invoke(pki_group, ["revoke", "--dir", str(tmp_path), "alice"])
    assert out.exit_code == 0 and "revoked alice" in out.output, out.output
    out = r.invoke(pki_group, ["revoke", "--dir", str(tmp_path), "alice"])
    assert out.exit_code == 0 and "revoked already" in out.output
    ca = pki.load(tmp_path, "ca")
    from cryptography import x509
    serial = x509.load_pem_x509_certificate((tmp_path / "alice.pem").read_bytes()).serial_number
    assert crl.parse((tmp_path / "crl.pem").read_bytes(), ca.cert) == {serial}
    out = r.invoke(pki_group, ["revoke", "--dir", str(tmp_path), "nobody"])
    assert out.exit_code == 1 and "nobody.pem does not exist" in out.output
    (tmp_path / "crl.pem").write_text("junk")
    out = r.invoke(pki_group, ["revoke", "--dir", str(tmp_path), "alice"])
    assert out.exit_code == 1 and "not a PEM certificate revocation list" in out.output


def test_revoked_cert_checks_the_issuer_too(ca, tmp_path):
    a = leaf(ca)
    other = pki.new_ca("other CA", now=NOW)
    twin = pki.issue(other, "alice", kind="client", now=NOW).cert
    path = tmp_path / "crl.pem"
    path.write_bytes(crl.render(ca, {a.serial_number: NOW, twin.serial_number: NOW}, now=NOW))
    w = crl.CrlWatch(path, ca.cert)
    w.poll()
    assert w.revoked_cert(a) and not w.revoked_cert(twin)  # another CA's serial is not ours to revoke


def test_refresh_says_what_poll_found_and_whether_the_file_was_refused(ca, tmp_path, caplog):
    import logging

    path = tmp_path / "crl.pem"
    a = leaf(ca)
    data, _ = crl.revoke(ca, crl.render(ca, {}, now=NOW), a, now=NOW)
    pki.write_pem(path, data, private=False)
    w = crl.CrlWatch(path, ca.cert)
    log = logging.getLogger("test.crl")
    with caplog.at_level(logging.INFO, logger="test.crl"):
        assert w.refresh(log) == ({a.serial_number}, False)
        assert w.refresh(log) == (frozenset(), False)  # unchanged: nothing said
        path.write_bytes(b"garbage")
        os.utime(path, ns=(1, os.stat(path).st_mtime_ns + 1_000_000))
        assert w.refresh(log) == (frozenset(), True) and w.revoked(a.serial_number)
    assert [r.levelname for r in caplog.records] == ["INFO", "ERROR"]
