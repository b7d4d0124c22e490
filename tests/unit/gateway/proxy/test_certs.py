"""gateway.proxy.certs, config and nft: leaves, configuration checks, the rendered table."""

import datetime as dt

import pytest
from cryptography import x509

from gateway.proxy import config, nft
from ztna import nft as ztna_nft
from gateway.proxy.certs import LeafCache
from ztna import pki

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def test_leaf_per_name_own_key_san_and_cached():
    ca = pki.new_ca("proxy CA", now=NOW)
    cache = LeafCache(ca, size=2)
    a, fresh = cache.get("Decrypt.Example.com.", NOW)
    assert fresh and cache.issued == 1
    assert a.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["decrypt.example.com"]
    a.cert.verify_directly_issued_by(ca.cert)
    assert a.key.public_key().public_numbers() != ca.key.public_key().public_numbers()
    again, fresh = cache.get("decrypt.example.com", NOW + dt.timedelta(hours=1))
    assert again is a and not fresh
    b, _ = cache.get("b.example.com", NOW)
    assert b.key.private_numbers().private_value != a.key.private_numbers().private_value
    cache.get("decrypt.example.com", NOW)  # most recent now; b is the oldest
    cache.get("c.example.com", NOW)
    assert "b.example.com" not in cache and "decrypt.example.com" in cache and len(cache) == 2


def test_leaf_renewed_before_expiry():
    ca = pki.new_ca("proxy CA", now=NOW)
    cache = LeafCache(ca, days=7, renew_before=dt.timedelta(days=1))
    a, _ = cache.get("x.example.com", NOW)
    b, fresh = cache.get("x.example.com", NOW + dt.timedelta(days=6, hours=1))
    assert fresh and b is not a


BASE = {"proxy": {"listen": "198.51.100.1:3128", "resolvers": ["203.0.113.53"], "trust_store": "/t.pem",
                  "ca_cert": "/c.pem", "ca_key": "/c.key"},
        "policy": {"client_networks": ["198.51.100.0/24"], "allow": ["*.example.com"]}}


def with_(table, **kw):
    doc = {k: dict(v) for k, v in BASE.items()}
    doc.setdefault(table, {}).update(kw)
    return doc


def test_config_ok():
    cfg = config.from_dict(BASE)
    assert cfg.mode == "explicit" and cfg.listen == ("198.51.100.1", 3128)
    assert cfg.transparent.ports == (443,)
    assert cfg.busy_poll_us == 20
    assert config.from_dict(with_("proxy", busy_poll_us=0)).busy_poll_us == 0  # 0 turns the spin off


@pytest.mark.parametrize("table,kw,msg", [
    ("proxy", {"listen": "3128"}, "ADDRESS:PORT"),
    ("proxy", {"mode": "sideways"}, "mode"),
    ("proxy", {"resolvers": []}, "resolvers"),
    ("proxy", {"resolvers": ["dns.example"]}, "not an IP"),
    ("proxy", {"max_connections": 0}, "max_connections"),
    ("proxy", {"colour": "red"}, "unknown"),
    ("proxy", {"busy_poll_us": 5000}, "busy_poll_us"),
    ("proxy", {"busy_poll_us": 2.5}, "whole number"),
    ("proxy", {"busy_poll_us": -1}, "busy_poll_us"),
    ("transparent", {"on_no_sni": "shrug"}, "on_no_sni"),
    ("transparent", {"nft_table": "x; flush ruleset"}, "nft_table"),
    ("policy", {"default": "perhaps"}, "default"),
])
def test_config_errors(table, kw, msg):
    with pytest.raises(config.ConfigError, match=msg):
        config.from_dict(with_(table, **kw))


def test_decrypt_needs_ca_and_trust_store_but_splicing_does_not():
    doc = with_("policy")
    del doc["proxy"]["ca_key"]
    with pytest.raises(config.ConfigError, match="ca_key"):
        config.from_dict(doc)
    doc["policy"]["decrypt"] = False
    assert config.from_dict(doc).ca_key is None


def test_nft_ruleset_text():
    text = nft.ruleset("ztna_proxy", client_networks=["198.51.100.0/24"], ports=[443, 8443], listen_port=15443)
    assert text == (
        "table ip ztna_proxy {\n"
        "\tcounter quic {\n"
        "\t}\n"
        "\tchain prerouting {\n"
        "\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        "\t\tip saddr { 198.51.100.0/24 } tcp dport { 443, 8443 } counter redirect to :15443\n"
        "\t}\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        "\t\tip saddr { 198.51.100.0/24 } udp dport { 443, 8443 } counter name quic "
        "reject with icmp type port-unreachable\n"
        "\t}\n"
        "}\n")
    allow = nft.ruleset("t", client_networks=["10.0.0.0/8"], ports=[443], listen_port=1, quic="allow")
    assert "udp dport { 443 } counter name quic accept\n" in allow and "reject" not in allow


def test_quic_setting():
    assert config.from_dict(BASE).transparent.quic == "reject"
    assert config.from_dict(with_("transparent", quic="allow")).transparent.quic == "allow"
    with pytest.raises(config.ConfigError, match="quic must be 'reject'"):
        config.from_dict(with_("transparent", quic="drop"))


@pytest.mark.parametrize("text, want", [
    ('{"nftables": [{"metainfo": {}}, {"counter": {"family": "ip", "name": "quic", "table": "t", '
     '"handle": 1, "packets": 3, "bytes": 120}}]}', (3, 120)),
    ('{"nftables": [{"counter": {"name": "other", "packets": 3, "bytes": 1}}]}', None),
    ('{"nftables": [{"counter": {"name": "quic", "packets": "3", "bytes": 1}}]}', None),
    ("not json", None), ("[1, 2]", None), ("", None),
])
def test_counter_untrusted(text, want):
    if want is None:
        with pytest.raises(nft.NftError):
            ztna_nft.counter_untrusted(text, "quic")
    else:
        assert ztna_nft.counter_untrusted(text, "quic") == want
