"""The ``ztna pki`` commands as a person runs them."""

import os
import stat

from click.testing import CliRunner

from ztna import pki
from ztna.cli import root


def test_init_and_issue_write_a_working_chain(tmp_path):
    r = CliRunner()
    out = r.invoke(root, ["pki", "init", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    out = r.invoke(root, ["pki", "issue", "--dir", str(tmp_path), "--name", "alice", "--kind", "agent"])
    assert out.exit_code == 0, out.output
    leaf = pki.load(tmp_path, "alice")
    assert pki.identity_of(leaf.cert) == "alice"
    assert leaf.cert.issuer == pki.load(tmp_path, "ca").cert.subject


def test_init_refuses_to_replace_a_ca_and_issue_needs_one(tmp_path):
    r = CliRunner()
    assert r.invoke(root, ["pki", "init", "--dir", str(tmp_path)]).exit_code == 0
    again = r.invoke(root, ["pki", "init", "--dir", str(tmp_path)])
    assert again.exit_code != 0 and "--force" in again.output
    none = r.invoke(root, ["pki", "issue", "--dir", str(tmp_path / "empty"), "--name", "x", "--kind", "server"])
    assert none.exit_code != 0 and "ztna pki init" in none.output


def test_every_role_is_listed_and_loads():
    out = CliRunner().invoke(root, ["--help"])
    assert out.exit_code == 0
    for role in ("agent", "gateway", "pki", "dns", "proxy", "roaming", "lab", "authdns"):
        assert role in out.output
        sub = CliRunner().invoke(root, [role, "--help"])
        assert sub.exit_code == 0, (role, sub.output)
