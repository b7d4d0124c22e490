"""pop.netrules: the rules file's refusals (with their lines), first-match decisions, the index, explain."""

import ipaddress
import random
from types import SimpleNamespace

import pytest

from pop import netrules as nr
from pop.sitehub import BACKHAUL, DROP, POP_EGRESS, Exit

SITES = {"branch1": nr.GatewaySite("branch1"), "branch2": nr.GatewaySite("branch2"),
         "hq": nr.GatewaySite("hq", True, "pop-egress"), "dc": nr.GatewaySite("dc", True, "drop")}
TCP, UDP, ICMP = 6, 17, 1

GOOD = '''# the admin's rules
[[firewall_rule]]
name = "block SaaS for branch1"
action = "block"
source = ["site:branch1"]
destination = ["domain:saas.example"]

[[firewall_rule]]
name = "allow the rest"
action = "allow"

[[network_rule]]
name = "SaaS via HQ"
type = "internet"
source = ["site:branch1", "site:branch2", "user:alice", "10.30.0.0/24"]
destination = ["domain:saas.example", "fqdn:whoami.example", "203.0.113.80", "198.18.0.0/16"]
backhaul_via = "hq"

[[network_rule]]
name = "web via dc"
source = ["site:branch2"]
destination = ["0.0.0.0/0"]
protocol = "tcp"
ports = [80, "8000-8080"]
backhaul_via = "dc"

[[network_rule]]
name = "rest by egress"
routing = "pop-egress"
'''


def names_from(table):
    return lambda addr, now: table.get(addr, ())


def rs(text=GOOD):
    return nr.loads(text, "rules.toml", SITES)


def test_a_good_file_compiles_with_its_lines():
    r = rs()
    assert [x.name for x in r.firewall] == ["block SaaS for branch1", "allow the rest"]
    assert [x.name for x in r.network] == ["SaaS via HQ", "web via dc", "rest by egress"]
    assert [x.line for x in r.firewall] == [2, 8] and [x.line for x in r.network] == [12, 19]+[27]
    assert r.network[1].ports == ((80, 80), (8000, 8080)) and r.network[1].proto == TCP


def test_the_firewall_blocks_before_routing_and_names_both_rules():
    r = rs()
    dns = names_from({"198.51.100.7": ["app.saas.example"]})
    ex = r.decide("branch1", TCP, "10.10.0.10", "198.51.100.7", 443, names_of=dns)
    assert ex == Exit(DROP, "SaaS via HQ", "block SaaS for branch1", None)
    # the same destination from branch2: allowed by the firewall, backhauled via hq
    ex = r.decide("branch2", TCP, "10.20.0.10", "198.51.100.7", 443, names_of=dns)
    assert ex == Exit(BACKHAUL, "SaaS via HQ", "allow the rest", "hq")


def test_first_match_and_default():
    r = rs()
    # whoami.example by fqdn, 203.0.113.80 bare, 198.18.x by CIDR
    dns = names_from({"192.0.2.99": ["whoami.example"], "192.0.2.98": ["x.whoami.example"]})
    assert r.decide("branch2", UDP, "10.20.0.1", "192.0.2.99", 53, names_of=dns).kind == BACKHAUL
    # fqdn: does not cover a subdomain; branch2's tcp/80 rule takes it then
    assert r.decide("branch2", TCP, "10.20.0.1", "192.0.2.98", 80, names_of=dns) == \
        Exit(BACKHAUL, "web via dc", "allow the rest", "dc")
    assert r.decide("branch2", TCP, "10.20.0.1", "192.0.2.98", 443, names_of=dns) == \
        Exit(POP_EGRESS, "rest by egress", "allow the rest", None)
    assert r.decide("branch2", TCP, "10.20.0.1", "192.0.2.98", 8080).network_rule == "web via dc"
    assert r.decide("branch2", UDP, "10.20.0.1", "192.0.2.98", 80).network_rule == "rest by egress"
    assert r.decide("branch2", TCP, "10.20.0.1", "203.0.113.80", 80).network_rule == "SaaS via HQ"  # first wins
    assert r.decide("branch2", TCP, "10.20.0.1", "198.18.200.1", 80).site == "hq"
    assert r.decide("user:alice", TCP, "100.64.0.2", "203.0.113.80", 443).site == "hq"
    assert r.decide("user:bob", TCP, "100.64.0.3", "203.0.113.80", 443).network_rule == "rest by egress"
    assert r.decide("other", TCP, "10.30.0.5", "203.0.113.80", 443).site == "hq"  # CIDR source
    # no rules at all: the PoP's egress, no names
    assert nr.loads("", "empty.toml", SITES).decide("branch1", TCP, "10.10.0.1", "8.8.8.8", 53) == Exit()


def test_a_gateway_site_not_connected_takes_its_fallback():
    r = rs()
    assert r.decide("branch2", TCP, "10.20.0.1", "203.0.113.80", 80, up={"hq"}).kind == BACKHAUL
    ex = r.decide("branch2", TCP, "10.20.0.1", "203.0.113.80", 80, up=set())
    assert ex == Exit(POP_EGRESS, "SaaS via HQ", "allow the rest", "hq")   # hq's fallback: pop-egress
    ex = r.decide("branch2", TCP, "10.20.0.1", "192.0.2.1", 80, up={"hq"})
    assert ex == Exit(DROP, "web via dc", "allow the rest", "dc")         # dc's fallback: drop
    m = r.match("branch2", TCP, "10.20.0.1", "192.0.2.1", 80, up={"hq"})
    assert m.fallback and m.network.name == "web via dc"


def test_groups_match_users_in_them():
    text = '[[network_rule]]\nname = "sales"\nsource = ["group:sales"]\nbackhaul_via = "hq"\n'
    r = rs(text)
    r.groups = {"carol": {"sales"}}
    assert r.decide("user:carol", TCP, "100.64.0.9", "1.1.1.1", 443).site == "hq"
    assert r.decide("user:dave", TCP, "100.64.0.9", "1.1.1.1", 443).network_rule is None
    assert r.decide("sales", TCP, "10.0.0.1", "1.1.1.1", 443).network_rule is None  # a site named like the group


BAD = [
    ("[[network_rule\nname = 1", 1, "not valid TOML"),
    ("x = 1\n", 1, "unknown key or table 'x'"),
    ("\n[other]\na = 1\n", 2, "unknown key or table 'other'"),
    ("network_rule = 3\n", 1, "array of tables"),
    ('[[network_rule]]\nrouting = "pop-egress"\n', 1, "needs name"),
    ('[[network_rule]]\nname = ""\nrouting = "pop-egress"\n', 2, "non-empty"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\n\n[[network_rule]]\nname = "a"\nrouting = "pop-egress"\n',
     6, "taken already by the network rule at line 1"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ncolour = "red"\n', 4, "unknown key 'colour'"),
    ('[[network_rule]]\nname = "a"\ntype = "wan"\nrouting = "pop-egress"\n', 3, "only \"internet\""),
    ('[[network_rule]]\nname = "a"\n', 1, "exactly one of backhaul_via"),
    ('[[network_rule]]\nname = "a"\nbackhaul_via = "hq"\nrouting = "pop-egress"\n', 4, "exactly one of"),
    ('[[network_rule]]\nname = "a"\nrouting = "hq"\n', 3, "the one routing"),
    ('[[network_rule]]\nname = "a"\nbackhaul_via = "paris"\n', 3, "'paris' is not a site of this PoP"),
    ('[[network_rule]]\nname = "a"\nbackhaul_via = "branch1"\n', 3, "give it backhaul_gateway = true"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = ["site:paris"]\n', 4, "site:paris is not a site"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = ["10.0.0.300/24"]\n', 4, "not an IPv4"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = ["10.0.0.1/24"]\n', 4, "host bits"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = ["2001:db8::/32"]\n', 4, "IPv4 only"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = ["host:x"]\n', 4, "write site:NAME"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = ["user:a b"]\n', 4, "user names"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = []\n', 4, "is empty"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\nsource = "site:branch1"\n', 4, "list of strings"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["domain:bad..example"]\n', 4,
     "not a valid domain"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["domain:sa$s.example"]\n', 4,
     "not a valid domain"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["fqdn:1.2.3.4"]\n', 4, "not a valid domain"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["saas.example"]\n', 4,
     "write domain:saas.example"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["url:x"]\n', 4, "write domain:NAME"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["2001:db8::1"]\n', 4, "IPv4 only"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = [\n  "198.18.0.0/15",\n  "198.19.4.0/24",\n]\n',
     4, "198.19.4.0/24 overlaps 198.18.0.0/15"),
    ('[[network_rule]]\nname = "a"\nrouting = "pop-egress"\ndestination = ["203.0.113.80", "203.0.113.80"]\n', 4,
     "overlaps"),
    ('[[firewall_rule]]\nname = "f"\n', 1, "action must be"),
    ('[[firewall_rule]]\nname = "f"\naction = "deny"\n', 3, "action must be"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nbackhaul_via = "hq"\n', 4, "unknown key 'backhaul_via'"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nprotocol = "sctp"\n', 4, "protocol"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nports = [443]\n', 4, "ports need protocol"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nprotocol = "tcp"\nports = [0]\n', 5, "1..65535"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nprotocol = "tcp"\nports = ["90-80"]\n', 5, "low to high"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nprotocol = "tcp"\nports = ["http"]\n', 5, "port number"),
    ('[[firewall_rule]]\nname = "f"\naction = "block"\nprotocol = "tcp"\nports = []\n', 5, "non-empty"),
    # a bad second table is found by order, past a first one
    ('[[firewall_rule]]\nname = "f"\naction = "allow"\n\n[[firewall_rule]]\n# no name here\naction = "block"\n', 5,
     "needs name"),
]


@pytest.mark.parametrize("text,line,why", BAD)
def test_every_refusal_names_its_line(text, line, why):
    with pytest.raises(nr.RulesError) as e:
        nr.loads(text, "rules.toml", SITES)
    msg = str(e.value)
    assert msg.startswith(f"rules.toml:{line}: "), msg
    assert why in msg, msg


def test_load_reads_a_file_and_refuses_missing_or_binary(tmp_path):
    p = tmp_path / "rules.toml"
    p.write_text(GOOD)
    assert len(nr.load(p, SITES)) == 5
    with pytest.raises(nr.RulesError, match="no such rules file"):
        nr.load(tmp_path / "nope.toml", SITES)
    p.write_bytes(b'[[network_rule]]\nname = "\xff"\n')
    with pytest.raises(nr.RulesError, match=r":2: not UTF-8"):
        nr.load(p, SITES)


def _naive(rules, site, proto, src, dst, dport, names):
    s, d = int(ipaddress.IPv4Address(src)), int(ipaddress.IPv4Address(dst))
    for r in rules:
        if not r.any_destination:
            hit = any(d & m == n for n, m in r.dst_nets) or any(x in r.fqdns for x in names) or any(
                x == dom or x.endswith("." + dom) for x in names for dom in r.domains)
            if not hit:
                continue
        if r.rest_matches(site, s, proto, dport, {}):
            return r.name
    return None


def test_the_index_is_first_match_over_the_whole_list():
    rnd = random.Random(7)
    parts = []
    for i in range(1500):
        dst = []
        for _ in range(rnd.randint(0, 3)):
            k = rnd.random()
            if k < 0.4:
                plen = rnd.choice([8, 16, 24, 32])
                net = ipaddress.IPv4Network((rnd.randrange(1 << 32) & nr._mask(plen), plen))
                if not any(net.overlaps(ipaddress.IPv4Network(x)) for x in dst if "/" in x or x[0].isdigit()):
                    dst.append(str(net))
            elif k < 0.7:
                dst.append(f"domain:d{rnd.randrange(50)}.example")
            else:
                dst.append(f"fqdn:h{rnd.randrange(50)}.d{rnd.randrange(50)}.example")
        src = rnd.choice([None, '["site:branch1"]', '["site:branch2", "10.0.0.0/8"]'])
        text = f'[[network_rule]]\nname = "r{i}"\nrouting = "pop-egress"\n'
        if dst:
            text += "destination = [" + ", ".join(f'"{x}"' for x in dst) + "]\n"
        elif rnd.random() < 0.9:
            text += 'destination = ["192.0.2.0/24"]\n'
        if src:
            text += f"source = {src}\n"
        if rnd.random() < 0.2:
            text += 'protocol = "tcp"\nports = [443]\n'
        parts.append(text)
    r = rs("\n".join(parts))
    for _ in range(3000):
        dst = str(ipaddress.IPv4Address(rnd.randrange(1 << 32)))
        if rnd.random() < 0.3:  # an address some rule covers
            rule = rnd.choice(r.network)
            if rule.dst_nets:
                n, m = rnd.choice(rule.dst_nets)
                dst = str(ipaddress.IPv4Address(n | (rnd.randrange(1 << 32) & ~m & 0xFFFFFFFF)))
        names = [f"h{rnd.randrange(50)}.d{rnd.randrange(50)}.example"] if rnd.random() < 0.5 else []
        site = rnd.choice(["branch1", "branch2", "hq"])
        src = rnd.choice(["10.1.2.3", "192.168.1.1"])
        proto, port = rnd.choice([(TCP, 443), (TCP, 80), (UDP, 443)])
        got = r.decide(site, proto, src, dst, port, names_of=lambda a, now: names).network_rule
        assert got == _naive(r.network, site, proto, src, dst, port, names)


def test_name_matches_and_domain_rules():
    r = rs()
    assert r.name_matches("saas.example") and r.name_matches("a.b.saas.example") and r.name_matches("whoami.example")
    assert not r.name_matches("x.whoami.example") and not r.name_matches("example")
    assert [x.name for x in r.domain_rules()] == ["block SaaS for branch1", "SaaS via HQ"]


LANS = {"branch1": (ipaddress.IPv4Network("10.10.0.0/24"),), "branch2": (ipaddress.IPv4Network("10.20.0.0/24"),),
        "hq": (ipaddress.IPv4Network("192.168.50.0/24"),), "dc": (ipaddress.IPv4Network("192.168.60.0/24"),)}


def test_explain_reads_sources_and_destinations():
    r = rs()
    e = nr.explain(r, LANS, "10.10.0.10", "saas.example", 443)
    assert e["source"] == {"site": "branch1", "address": "10.10.0.10"}
    assert e["firewall_rule"]["name"] == "block SaaS for branch1" and e["network_rule"]["name"] == "SaaS via HQ"
    assert e["exit"] == DROP
    text = nr.explain_text(e)
    assert "block SaaS for branch1" in text and "rules.toml:2" in text and "drop (blocked" in text
    e = nr.explain(r, LANS, "site:branch2", "203.0.113.80", 80)
    assert e["exit"] == BACKHAUL and e["site"] == "hq" and e["fallback"] == "pop-egress"
    assert "backhaul via hq (if hq is not connected: pop-egress)" in nr.explain_text(e)
    e = nr.explain(r, LANS, "site:branch2", "192.0.2.5", 8000)
    assert e["network_rule"]["name"] == "web via dc" and e["fallback"] == "drop"
    e = nr.explain(r, LANS, "user:alice", "198.18.1.1", 0, "udp")
    assert e["site"] == "hq" and e["source"] == {"site": "user:alice", "address": None}
    e = nr.explain(r, LANS, "172.16.0.1", "8.8.8.8", 53, "udp")  # in no site's LAN
    assert e["source"]["site"] is None and e["network_rule"]["name"] == "rest by egress" and e["exit"] == POP_EGRESS
    e = nr.explain(None, LANS, "site:branch1", "8.8.8.8")
    assert e["exit"] == POP_EGRESS and "[pop] rules is not set" in nr.explain_text(e)
    for src, dst, why in (("site:paris", "1.1.1.1", "no such site"), ("bob", "1.1.1.1", "write site:NAME"),
                          ("user:a b", "1.1.1.1", "user names"), ("site:hq", "not a name!", "neither")):
        with pytest.raises(nr.ExplainError, match=why):
            nr.explain(r, LANS, src, dst)
    with pytest.raises(nr.ExplainError, match="--proto"):
        nr.explain(r, LANS, "site:hq", "1.1.1.1", 0, "gre")


# ---- pop.toml: [pop] rules and the [sites] gateway settings --------------------------------
def popconf(tmp_path, sites, rules=None):
    for n in ("c.pem", "c.key", "ca.pem"):
        (tmp_path / n).write_text("x")
    extra = ""
    if rules is not None:
        (tmp_path / "rules.toml").write_text(rules)
        extra = f'rules = "{tmp_path}/rules.toml"\n'
    f = tmp_path / "pop.toml"
    f.write_text(f'[pop]\nlisten = "192.0.2.10"\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/c.key"\n'
                 f'ca = "{tmp_path}/ca.pem"\ntunnel_name = "t.example"\nconnector_name = "c.example"\n'
                 f'site_name = "s.example"\negress_interface = "eth0"\n{extra}\n[sites]\n{sites}')
    return f


HQ = 'branch1 = { lan = ["10.10.0.0/24"] }\nhq = { lan = ["192.168.50.0/24"], backhaul_gateway = true, fallback = "drop" }\n'


def test_pop_toml_takes_gateway_sites_and_a_rules_file(tmp_path):
    from pop.config import load

    cfg, _ = load(popconf(tmp_path, HQ, '[[network_rule]]\nname = "x"\nbackhaul_via = "hq"\n'))
    assert cfg.sites["hq"].backhaul_gateway and cfg.sites["hq"].fallback == "drop"
    assert not cfg.sites["branch1"].backhaul_gateway and cfg.sites["branch1"].fallback == "pop-egress"
    assert cfg.rule_set.decide("branch1", TCP, "10.10.0.2", "1.1.1.1", 443, up=set()) == Exit(DROP, "x", None, "hq")
    cfg, _ = load(popconf(tmp_path, HQ))
    assert cfg.rule_set is None


@pytest.mark.parametrize("sites,why", [
    ('hq = { lan = ["192.168.50.0/24"], gateway = true }\n', "unknown key"),
    ('hq = { lan = ["192.168.50.0/24"], backhaul_gateway = "yes" }\n', "true or false"),
    ('hq = { lan = ["192.168.50.0/24"], backhaul_gateway = true, fallback = "wan2" }\n', "pop-egress"),
    ('hq = { lan = ["192.168.50.0/24"], fallback = "drop" }\n', "only for a gateway site"),
])
def test_pop_toml_refuses_bad_gateway_settings(tmp_path, sites, why):
    from pop.config import load
    from ztna.config import ConfigError

    with pytest.raises(ConfigError, match=why):
        load(popconf(tmp_path, sites))


def test_pop_toml_refuses_a_bad_rules_file_with_its_line(tmp_path):
    from pop.config import load
    from ztna.config import ConfigError

    with pytest.raises(ConfigError, match=r"rules\.toml:3: .*'branch1' is not a gateway site"):
        load(popconf(tmp_path, HQ, '[[network_rule]]\nname = "x"\nbackhaul_via = "branch1"\n'))


def test_sighup_reload_keeps_the_running_rules_on_a_bad_file(tmp_path, caplog):
    from collections import Counter

    from pop.config import load
    from pop.service import Pop

    cfg, _ = load(popconf(tmp_path, HQ, '[[network_rule]]\nname = "x"\nbackhaul_via = "hq"\n'))
    shell = SimpleNamespace(cfg=cfg, rules=cfg.rule_set, relay=SimpleNamespace(counters=Counter()), dmap=None)
    (tmp_path / "rules.toml").write_text('[[network_rule]]\nname = "y"\nrouting = "pop-egress"\n'
                                         '[[network_rule]]\nname = "z"\nbackhaul_via = "paris"\n')
    assert not Pop.reload_rules(shell)
    assert shell.rules is cfg.rule_set and shell.relay.counters["rules_reloads_refused"] == 1
    assert "rules.toml:6:" in caplog.text and "the running rules stay (1 rules)" in caplog.text
    (tmp_path / "rules.toml").write_text('[[network_rule]]\nname = "y"\nrouting = "pop-egress"\n')
    assert Pop.reload_rules(shell)
    assert [r.name for r in shell.rules.network] == ["y"] and shell.relay.counters["rules_reloads"] == 1
    assert shell.rules.decide("hq", TCP, "192.168.50.1", "1.1.1.1", 443) == Exit(POP_EGRESS, "y", None, None)


def test_the_service_asks_the_rules_with_the_connected_sites(tmp_path):
    from pop.config import load
    from pop.service import Pop

    cfg, _ = load(popconf(tmp_path, HQ, '[[network_rule]]\nname = "x"\nbackhaul_via = "hq"\n'))
    shell = SimpleNamespace(rules=cfg.rule_set, hub=SimpleNamespace(by_site={}), names_of=None, tun_ip="100.127.255.254")
    assert Pop._decide(shell, "branch1", TCP, "10.10.0.2", "1.1.1.1", 443) == Exit(DROP, "x", None, "hq")
    shell.hub.by_site["hq"] = 7  # hq's tunnel is up
    assert Pop._decide(shell, "branch1", TCP, "10.10.0.2", "1.1.1.1", 443) == Exit(BACKHAUL, "x", None, "hq")
    # the PoP's own TUN address (its DNS for the sites) is never backhauled
    assert Pop._decide(shell, "branch1", UDP, "10.10.0.2", "100.127.255.254", 53) == Exit()
    shell.rules = None
    assert Pop._decide(shell, "branch1", TCP, "10.10.0.2", "1.1.1.1", 443) == Exit()


def test_explain_cli(tmp_path):
    import json

    from click.testing import CliRunner

    from pop.cli import pop

    f = popconf(tmp_path, HQ, '[[firewall_rule]]\nname = "no dns"\naction = "block"\nprotocol = "udp"\n'
                              'ports = [53]\n\n[[network_rule]]\nname = "x"\nbackhaul_via = "hq"\n'
                              'destination = ["domain:saas.example"]\n')
    r = CliRunner().invoke(pop, ["explain", "10.10.0.7", "app.saas.example", "--port", "443", "--config", str(f)])
    assert r.exit_code == 0, r.output
    assert "site branch1 (10.10.0.7)" in r.output and "'x'" in r.output and "backhaul via hq" in r.output
    r = CliRunner().invoke(pop, ["explain", "site:branch1", "9.9.9.9", "--port", "53", "--proto", "udp",
                                 "--config", str(f), "--json"])
    e = json.loads(r.output)
    assert e["exit"] == "drop" and e["firewall_rule"]["name"] == "no dns" and e["network_rule"] is None
    r = CliRunner().invoke(pop, ["explain", "site:nowhere", "9.9.9.9", "--config", str(f)])
    assert r.exit_code != 0 and "no such site" in r.output
