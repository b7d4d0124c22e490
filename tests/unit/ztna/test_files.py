import os
import stat

import pytest

from ztna.files import write_atomic


def test_replaces_with_the_mode_asked_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "key.pem"
    p.write_text("old")
    write_atomic(p, b"new secret", 0o600)
    assert p.read_bytes() == b"new secret"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]


def test_text_is_written_as_utf8(tmp_path):
    write_atomic(tmp_path / "r", "nameserver 127.0.0.1\n# é\n")
    assert (tmp_path / "r").read_text(encoding="utf-8").endswith("# é\n")


def test_missing_directory_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "f", "x")
    assert os.listdir(tmp_path) == []


def test_a_symlink_is_written_through_and_stays_a_symlink(tmp_path):
    # Ubuntu's /etc/resolv.conf is a link (resolvconf, systemd-resolved): replacing it by a file breaks them.
    target = tmp_path / "run" / "resolv.conf"
    target.parent.mkdir()
    target.write_text("nameserver 192.0.2.1\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to("run/resolv.conf")
    write_atomic(link, "nameserver 192.0.2.2\n")
    assert link.is_symlink() and os.readlink(link) == "run/resolv.conf"
    assert target.read_text() == "nameserver 192.0.2.2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["resolv.conf"]  # no temporary file left
