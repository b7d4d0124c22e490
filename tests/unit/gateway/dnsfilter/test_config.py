import re
from pathlib import Path

import pytest

from gateway.dnsfilter.answers import Column
from gateway.dnsfilter.config import ConfigError, from_dict, load

DOC = Path(__file__).resolve().parents[4] / "docs" / "dns-security.md"


def docs_example() -> str:
    return re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)


def test_the_documented_example_loads_and_means_what_it_says(tmp_path):
    (tmp_path / "categories.txt").write_text("# c\nddns.bad.example dynamic-dns\nBücher.example shopping,gambling\n")
    (tmp_path / "block.txt").write_text("*.evil.example\n\nother.bad.example # comment\n")
    cfg_path = tmp_path / "dns.toml"
    cfg_path.write_text(docs_example())
    cfg = load(cfg_path)
    assert cfg.listen == ["208.67.222.222"] and cfg.upstreams == [("203.0.113.53", 53), ("203.0.113.54", 5353)]
    assert cfg.query_log == tmp_path / "dns-queries.jsonl"
    assert cfg.blockpage.addresses("malware", Column.SECURITY) == ("192.0.2.81", "2001:db8::81")
    assert cfg.blockpage.addresses("corp-block", Column.LIST) == ("192.0.2.82", "::ffff:192.0.2.82")
    assert cfg.blockpage.addresses("gambling", Column.CONTENT) == ("192.0.2.80", "::ffff:192.0.2.80")
    ps = cfg.policies
    office = ps.select("198.51.100.10", None)
    laptop = ps.select("198.51.100.10", "laptop-1")
    assert (office.name, laptop.name) == ("office", "roaming-laptops")
    assert ps.decide(office, "x.evil.example").column is Column.LIST
    assert ps.decide(office, "xn--bcher-kva.example").column is Column.CONTENT
    assert ps.decide(office, "ddns.bad.example").column is Column.DDNS
    assert not ps.decide(laptop, "ddns.bad.example").blocked
    assert not ps.decide(office, "docs.bad.example").blocked
    assert cfg.tunnel.long_name == 50 and cfg.rate_qps == 200


@pytest.mark.parametrize("patch,words", [
    ({"policy": [{"name": "p", "networks": ["10.0.0.0/8"], "block_lists": ["nope"]}]}, "no [lists.nope]"),
    ({"policy": []}, "no [[policy]]"),
    ({"server": {"upstreams": []}}, "upstreams is empty"),
    ({"server": {"upstreams": ["not-an-ip"]}}, "not an IP address"),
    ({"tunneling": {"bogus": 1}}, "not a setting"),
    ({"tunneling": {"window": "long"}}, "must be float"),
    ({"blockpage": {"https_port": 443}}, "ca_cert"),
    ({"surprise": {}}, "unknown section"),
    ({"policy": [{"name": "p", "networks": ["300.0.0.0/8"]}]}, "networks"),
])
def test_errors_say_what_is_wrong(patch, words):
    doc = {"server": {"upstreams": ["203.0.113.53"]}, "blockpage": {"https_port": 0},
           "policy": [{"name": "p", "networks": ["10.0.0.0/8"]}]}
    doc.update(patch)
    with pytest.raises(ConfigError) as e:
        from_dict(doc)
    assert words in str(e.value)


def test_bad_toml_and_missing_files(tmp_path):
    p = tmp_path / "dns.toml"
    p.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(p)
    with pytest.raises(ConfigError, match="cannot read"):
        from_dict({"server": {"upstreams": ["203.0.113.53"]}, "blockpage": {"https_port": 0},
                   "categories": {"files": ["missing.txt"]},
                   "policy": [{"networks": ["10.0.0.0/8"]}]}, tmp_path)
    (tmp_path / "cats.txt").write_text("lonely-domain.example\n")
    with pytest.raises(ConfigError, match="cats.txt:1"):
        from_dict({"server": {"upstreams": ["203.0.113.53"]}, "blockpage": {"https_port": 0},
                   "categories": {"files": ["cats.txt"]}, "policy": [{"networks": ["10.0.0.0/8"]}]}, tmp_path)


def test_explain_says_policy_verdict_and_answer(tmp_path):
    from click.testing import CliRunner

    from gateway.dnsfilter.cli import dns

    (tmp_path / "categories.txt").write_text("ddns.bad.example dynamic-dns\n")
    (tmp_path / "block.txt").write_text("evil.example\n")
    (tmp_path / "dns.toml").write_text(docs_example())
    run = lambda *a: CliRunner().invoke(dns, ["explain", "--config", str(tmp_path / "dns.toml"), *a])
    out = run("--source", "198.51.100.10", "--type", "TXT", "Malware.Bad.Example.")
    assert out.exit_code == 0 and "policy:   office" in out.output and "answer:   REFUSED" in out.output
    out = run("--source", "198.51.100.10", "--type", "A", "x.evil.example")
    assert "block-page address 192.0.2.82" in out.output
    out = run("--source", "198.51.100.10", "--device", "laptop-1", "ddns.bad.example")
    assert "roaming-laptops" in out.output and "real answer" in out.output
    assert "no served network" in run("--source", "203.0.113.9", "www.example.com").output
    assert run("--source", "nope", "x.example").exit_code != 0
