"""ztna.nft: what it hands to nft and how it reads nft's answers (a stand-in nft on PATH, no root)."""

import json
import os
import stat

import pytest

from ztna import nft

FAKE = """#!/bin/sh
# Records its arguments and stdin, then answers as $FAKE_NFT_RC / $FAKE_NFT_OUT say.
printf '%s\\n' "$*" >> "$FAKE_NFT_LOG"
if [ "$1" = "-f" ]; then cat >> "$FAKE_NFT_LOG"; fi
[ -n "$FAKE_NFT_OUT" ] && cat "$FAKE_NFT_OUT"
[ -n "$FAKE_NFT_ERR" ] && echo "$FAKE_NFT_ERR" >&2
exit "${FAKE_NFT_RC:-0}"
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nft"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    logf = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NFT_LOG", str(logf))
    monkeypatch.delenv("FAKE_NFT_RC", raising=False)
    monkeypatch.delenv("FAKE_NFT_OUT", raising=False)
    monkeypatch.delenv("FAKE_NFT_ERR", raising=False)
    return lambda: logf.read_text() if logf.exists() else ""


def test_apply_pipes_the_text_to_nft_f(fake):
    nft.apply("table ip t { }\n")
    assert fake() == "-f -\ntable ip t { }\n"


def test_apply_refused_says_what_and_why(fake, monkeypatch):
    monkeypatch.setenv("FAKE_NFT_RC", "1")
    monkeypatch.setenv("FAKE_NFT_ERR", "Error: syntax error")
    with pytest.raises(nft.NftError, match="nft refused the gateway's rules: Error: syntax error"):
        nft.apply("nonsense", what="the gateway's rules")


def test_replace_table_deletes_a_leftover_first_and_tolerates_its_absence(fake, monkeypatch):
    nft.replace_table("ztna_x", "table ip ztna_x { }\n")
    assert fake().splitlines()[:2] == ["delete table ip ztna_x", "-f -"]


def test_delete_table_reports_whether_it_existed(fake, monkeypatch):
    assert nft.delete_table("t") is True
    monkeypatch.setenv("FAKE_NFT_RC", "1")
    assert nft.delete_table("t") is False
    assert nft.table_exists("t") is False


def test_counters_reads_named_counters(fake, monkeypatch, tmp_path):
    out = tmp_path / "out.json"
    out.write_text(json.dumps({"nftables": [
        {"metainfo": {"version": "1.0"}},
        {"counter": {"family": "ip", "name": "ct_invalid", "table": "t", "packets": 7, "bytes": 400}},
        {"counter": {"family": "ip", "name": "inside_leak", "table": "t", "packets": 0, "bytes": 0}},
        {"counter": {"family": "ip", "name": "other", "table": "t", "packets": 3, "bytes": 0}},
    ]}))
    monkeypatch.setenv("FAKE_NFT_OUT", str(out))
    assert nft.counters("t", ("ct_invalid", "inside_leak")) == {"ct_invalid": 7, "inside_leak": 0}
    assert nft.counters("t")["other"] == 3
    assert fake().splitlines()[0] == "-j list counters table ip t"


def test_counters_errors_are_nft_errors(fake, monkeypatch, tmp_path):
    out = tmp_path / "out.json"
    out.write_text("not json")
    monkeypatch.setenv("FAKE_NFT_OUT", str(out))
    with pytest.raises(nft.NftError, match="not its JSON"):
        nft.counters("t")
    monkeypatch.setenv("FAKE_NFT_RC", "1")
    monkeypatch.setenv("FAKE_NFT_ERR", "No such file or directory")
    with pytest.raises(nft.NftError, match="cannot list the counters of t"):
        nft.counters("t")


def test_missing_nft_is_an_nft_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(nft.NftError, match="not installed"):
        nft.apply("x")
