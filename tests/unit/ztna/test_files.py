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
