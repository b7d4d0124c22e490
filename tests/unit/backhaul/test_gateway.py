"""backhaul.gateway: a gateway site's nft table and policy routing, as text (the lab runs them)."""

from backhaul.config import WanConfig
from backhaul.gateway import marks, plan, ruleset, use_text

WANS = {"wan1": WanConfig("eth1", "198.18.1.2", "198.18.1.1"), "wan2": WanConfig("eth2", "198.18.2.2", "198.18.2.1")}


def test_new_connections_from_the_tun_take_the_ports_mark_and_leave_with_its_address():
    text = ruleset("ztna-site0", 0x5A100, WANS, "wan1")
    assert "chain choose {\n    ct mark set 0x5a101\n  }" in text
    assert 'iifname "ztna-site0" ct state new jump choose' in text
    assert 'iifname "ztna-site0" ct direction original meta mark set ct mark' in text
    # replies of a marked connection are marked for the TUN's table
    assert 'iifname != "ztna-site0" ct direction reply ct mark { 0x5a101, 0x5a102, 0x5a104 } meta mark set 0x5a103' in text
    assert 'oifname "eth1" ct mark 0x5a101 snat to 198.18.1.2' in text
    assert 'oifname "eth2" ct mark 0x5a102 snat to 198.18.2.2' in text
    assert "snat" not in ruleset("ztna-site0", 0x5A100, {}, "local")  # the local gateway: no NAT


def test_a_port_change_is_one_transaction_on_the_choose_chain():
    assert use_text(0x5A100, "wan2") == ("flush chain ip ztna_site_gw choose\n"
                                         "add rule ip ztna_site_gw choose ct mark set 0x5a102\n")
    assert marks(0x5A100) == {"wan1": 0x5A101, "wan2": 0x5A102, "tun": 0x5A103, "local": 0x5A104}


def test_the_policy_routing_plan():
    got = [" ".join(c) for c in plan("ztna-site0", 5100, 0x5A100, WANS)]
    assert got == [
        "route replace default dev ztna-site0 table 5103",
        "route replace default via 198.18.1.1 dev eth1 table 5101",
        "route replace default via 198.18.2.1 dev eth2 table 5102",
        "rule add priority 5100 fwmark 0x5a103 lookup 5103",
        "rule add priority 5101 fwmark 0x5a101 lookup 5101",
        "rule add priority 5105 from 198.18.1.2 lookup 5101",
        "rule add priority 5102 fwmark 0x5a102 lookup 5102",
        "rule add priority 5106 from 198.18.2.2 lookup 5102",
    ]
    got = [" ".join(c) for c in plan("ztna-site0", 5100, 0x5A100, {}, "192.168.50.254")]
    assert got == ["route replace default dev ztna-site0 table 5103",
                   "route replace default via 192.168.50.254 table 5104",
                   "rule add priority 5100 fwmark 0x5a103 lookup 5103",
                   "rule add priority 5104 fwmark 0x5a104 lookup 5104"]
