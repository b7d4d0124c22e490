"""scripts/install-units.sh and packaging/systemd/: rendered into a temporary folder, never installed (no root)."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ROLES = ("agent", "gateway", "dns", "proxy", "roaming")
# What each role needs, and nothing more (docs/operations.md says why for each).
CAPS = {
    "agent": {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"},
    "gateway": {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"},
    "dns": {"CAP_NET_BIND_SERVICE"},
    "proxy": {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"},
    "roaming": {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"},  # NET_ADMIN: the resolved backend's link
}
KNOWN_CAPS = {"CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    dest = tmp_path_factory.mktemp("units")
    ztna = Path(sys.executable).with_name("ztna")
    if not ztna.exists():
        pytest.skip("no ztna executable beside this interpreter (run scripts/install.sh)")
    out = subprocess.run([str(ROOT / "scripts" / "install-units.sh"), "--dest", str(dest), "--ztna", str(ztna),
                          "--conf", "/etc/ztna", "--no-reload"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dest, ztna


def unit(dest: Path, role: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string((dest / f"ztna-{role}.service").read_text())
    return cp


def test_every_role_has_a_hardened_unit(rendered):
    dest, ztna = rendered
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"ztna-{r}.service" for r in ROLES)
    for role in ROLES:
        text = (dest / f"ztna-{role}.service").read_text()
        assert "@ZTNA@" not in text and "@CONF@" not in text and "@DOCS@" not in text, role
        s = unit(dest, role)["Service"]
        assert s["ExecStart"].startswith(f"{ztna} {role} run --config /etc/ztna/{role}.toml"), role
        assert s["NoNewPrivileges"] == "yes" and s["ProtectSystem"] == "strict", role
        assert s["Restart"] == "on-failure" and s["KillMode"] == "control-group", role
        caps = set(s["CapabilityBoundingSet"].split())
        assert caps <= KNOWN_CAPS and caps == CAPS[role], (role, caps)
        assert unit(dest, role)["Install"]["WantedBy"] == "multi-user.target"


def test_dns_state_is_given_back_after_a_kill():
    # The agent's guardian survives SIGTERM to the whole group; after a SIGKILL of everything
    # ExecStopPost restores. Checked in the templates, before rendering.
    for role in ("agent", "roaming"):
        text = (ROOT / "packaging" / "systemd" / f"ztna-{role}.service").read_text()
        assert f"ExecStopPost=-@ZTNA@ {role} restore --config @CONF@/{role}.toml" in text
    for role in ("dns", "proxy"):
        text = (ROOT / "packaging" / "systemd" / f"ztna-{role}.service").read_text()
        assert "--run-dir /run/ztna" in text and f"PIDFile=/run/ztna/{role}.pid" in text
        assert "ExecReload=/bin/kill -HUP $MAINPID" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_finds_nothing(rendered):
    dest, _ = rendered
    out = subprocess.run(["systemd-analyze", "verify", *sorted(map(str, dest.glob("*.service")))],
                         capture_output=True, text=True, timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if str(dest) in line or "ztna-" in line]
    assert out.returncode == 0 and not ours, out.stdout + out.stderr


def test_unknown_arguments_and_missing_ztna_are_refused(tmp_path):
    out = subprocess.run([str(ROOT / "scripts" / "install-units.sh"), "--bogus"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown argument --bogus" in out.stderr
    out = subprocess.run([str(ROOT / "scripts" / "install-units.sh"), "--dest", str(tmp_path), "--ztna",
                          str(tmp_path / "nope"), "--no-reload"], capture_output=True, text=True)
    assert out.returncode == 1 and "no ztna executable" in out.stderr and not list(tmp_path.iterdir())
