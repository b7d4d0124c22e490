"""The file side of the backend, without root: atomic writes, sources, detection."""

import os

import pytest

from agent.roaming import backend
from ztna import resolvconf


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "resolv.conf"
    p.write_text("nameserver 192.0.2.1\n")
    backend.atomic_write(p, "nameserver 127.0.0.1\n")
    assert p.read_text() == "nameserver 127.0.0.1\n"
    assert oct(p.stat().st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(tmp_path)) == ["resolv.conf"]


def test_atomic_write_into_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(backend.BackendError, match="cannot write"):
        backend.atomic_write(tmp_path / "nope" / "resolv.conf", "x\n")


def test_read_text_missing_and_malformed(tmp_path):
    assert backend.read_text(tmp_path / "absent") is None
    (tmp_path / "bad").write_bytes(b"nameserver 1.2.3\n")
    with pytest.raises(resolvconf.ResolvConfError, match="line 1"):
        backend.read_text(tmp_path / "bad")


def test_interface_sources_resolvconf_style(tmp_path):
    (tmp_path / "vpn0.openvpn").write_text("nameserver 192.168.1.53\nsearch corp.example\n")
    (tmp_path / "eth0").write_text("nameserver 192.0.2.1\n")
    (tmp_path / "wlan0").write_text("nameserver banana\n")  # skipped, with a warning
    (tmp_path / ".hidden").write_text("nameserver 192.0.2.9\n")
    src = backend.interface_sources(tmp_path)
    assert set(src) == {"vpn0", "eth0"}
    assert src["vpn0"].nameservers == ["192.168.1.53"] and src["vpn0"].search == ["corp.example"]
    assert backend.interface_sources(None) == {} and backend.interface_sources(tmp_path / "absent") == {}


def test_machine_id_from_file_or_host_name(tmp_path):
    (tmp_path / "mid").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    assert backend.machine_id(tmp_path / "mid") == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    (tmp_path / "junk").write_text("not an id")
    derived = backend.machine_id(tmp_path / "junk")
    assert len(derived) == 32 and derived == backend.machine_id(tmp_path / "absent")


def test_daemon_with_resolved_not_answering_refuses_and_changes_nothing(tmp_path):
    from agent.roaming.config import from_dict
    from agent.roaming.daemon import Daemon, StartError

    stub = tmp_path / "run/systemd/resolve/stub-resolv.conf"
    stub.parent.mkdir(parents=True)
    stub.write_text("nameserver 127.0.0.53\nsearch .\n")
    rc = tmp_path / "resolv.conf"
    rc.symlink_to(stub)
    tool = tmp_path / "resolvectl"
    tool.write_text("#!/bin/sh\necho 'Failed to get global data: Connection refused' >&2\nexit 1\n")
    tool.chmod(0o755)
    for setting in ("auto", "resolved"):
        cfg = from_dict({"resolv_conf": str(rc), "state_dir": str(tmp_path / "state"), "backend": setting,
                         "machine_id_file": str(tmp_path / "mid"), "resolvectl": str(tool)})
        with pytest.raises(StartError, match="resolvectl does not answer.*Connection refused.*DNS left as it is"):
            Daemon(cfg).preflight()
        assert rc.is_symlink() and stub.read_text() == "nameserver 127.0.0.53\nsearch .\n"
        assert not (tmp_path / "state").exists()
