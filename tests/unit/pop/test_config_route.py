"""pop.route (SNI on 443), pop.policy (who may publish what) and pop.config (pop.toml's refusals)."""

import pytest

from gateway.agentless.route import Refuse
from pop import route as r
from pop.config import load
from pop.policy import PopPolicy
from ztna import tlswire
from ztna.config import ConfigError


def hello(sni):
    return tlswire.ClientHello(raw=b"", legacy_version=0x0303, session_id=b"", cipher_suites=(), extensions=(), sni=sni)


def routed(sni, aliases=frozenset()):
    return r.route(hello(sni), tunnel_name="tunnel.pop.example", connector_name="connector.pop.example",
                   aliases=aliases)


def test_routes_by_sni():
    assert routed("Tunnel.Pop.Example") == r.Agent("tunnel.pop.example")
    assert routed("connector.pop.example") == r.Connector("connector.pop.example")
    assert routed("app-x.alias.pop.example", frozenset({"app-x.alias.pop.example"})) == r.Alias("app-x.alias.pop.example")
    other = routed("www.example.com")
    assert isinstance(other, Refuse) and other.alert == tlswire.ALERT_UNRECOGNIZED_NAME
    assert isinstance(routed(None), Refuse)
    assert isinstance(routed("bad name!"), Refuse)
    garbage = r.route(None, tunnel_name="t.example", connector_name="c.example", error="not TLS")
    assert garbage.alert == tlswire.ALERT_DECODE_ERROR and "not TLS" in garbage.reason


def test_who_may_publish_what():
    p = PopPolicy({}, {"gw1": ["app.corp.example", "*.apps.corp.example"]})
    assert p.may_publish("gw1", "app.corp.example")[0]
    assert p.may_publish("gw1", "x.apps.corp.example")[0]          # covered by its pattern
    assert p.may_publish("gw1", "*.apps.corp.example")[0]          # the pattern itself
    assert not p.may_publish("gw1", "*.corp.example")[0]           # wider than granted
    assert not p.may_publish("gw1", "hr.corp.example")[0]
    assert not p.may_publish("gw2", "app.corp.example")[0]
    assert not p.may_publish("gw1", 5)[0]
    assert not p.may_publish("gw1", "no way")[0]
    assert p.serves("*.apps.corp.example", "a.apps.corp.example") and not p.serves("app.corp.example", "b.corp.example")


def write(tmp_path, body):
    for n in ("c.pem", "c.key", "ca.pem"):
        (tmp_path / n).write_text("x")
    f = tmp_path / "pop.toml"
    f.write_text(f'[pop]\nlisten = "192.0.2.10"\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/c.key"\n'
                 f'ca = "{tmp_path}/ca.pem"\n' + body)
    return f


def test_config_loads_and_refuses_what_it_cannot_route(tmp_path):
    cfg, pol = load(write(tmp_path, 'tunnel_name = "T.pop.example"\nconnector_name = "c.pop.example"\n'
                                    '[policy]\nalice = ["app.corp.example"]\n[connectors]\ngw1 = ["app.corp.example"]\n'))
    assert cfg.tunnel_name == "t.pop.example" and pol.allows("alice", "app.corp.example")[0]
    with pytest.raises(ConfigError, match="must differ"):
        load(write(tmp_path, 'tunnel_name = "a.example"\nconnector_name = "a.example"\n'))
    with pytest.raises(ConfigError, match=r"\[connectors\]"):
        load(write(tmp_path, 'tunnel_name = "a.example"\nconnector_name = "b.example"\n[connectors]\ngw1 = "x"\n'))
    with pytest.raises(ConfigError, match="window"):
        load(write(tmp_path, 'tunnel_name = "a.example"\nconnector_name = "b.example"\nwindow = 10\n'))


def test_gateway_pop_section(tmp_path):
    from pathlib import Path

    from gateway.connector import load_pop

    for n in ("g.pem", "g.key", "ca.pem"):
        (tmp_path / n).write_text("x")
    base = {"address": "192.0.2.10", "name": "Connector.Pop.Example", "cert": f"{tmp_path}/g.pem",
            "key": f"{tmp_path}/g.key"}
    assert load_pop({}, Path("gw.toml"), default_ca="") is None
    cfg = load_pop({"pop": {**base, "resources": ["App.Corp.Example"]}}, Path("gw.toml"), default_ca=f"{tmp_path}/ca.pem")
    assert cfg.name == "connector.pop.example" and cfg.resources == ["app.corp.example"] and cfg.ca.endswith("ca.pem")
    for bad, why in (({"resources": []}, "empty"), ({"resources": ["a.example", "A.example"]}, "twice"),
                     ({"resources": ["a.example"], "address": "pop"}, "pop")):
        with pytest.raises(ConfigError, match=why):
            load_pop({"pop": {**base, **bad}}, Path("gw.toml"), default_ca=f"{tmp_path}/ca.pem")


def test_agentless_section_uses_the_gateways_parser(tmp_path):
    base = ('tunnel_name = "t.pop.example"\nconnector_name = "c.pop.example"\n[policy]\nalice = ["app.corp.example"]\n'
            '[connectors]\ngw1 = ["app.corp.example"]\n')
    cfg, _ = load(write(tmp_path, base))
    assert cfg.agentless is None
    app = (f'[[agentless.app]]\nname = "App.Corp.Example"\ncert = "{tmp_path}/c.pem"\nkey = "{tmp_path}/c.key"\n'
           f'upstream_ca = "{tmp_path}/ca.pem"\nauth = "certificate"\n')
    section = (f'[agentless]\nusers = "{tmp_path}/u.json"\nsession_key = "{tmp_path}/k"\n'
               f'access_log = "{tmp_path}/a.jsonl"\n')
    cfg, _ = load(write(tmp_path, base + section + app))
    a = cfg.agentless
    assert [x.name for x in a.apps] == ["app.corp.example"] and a.apps[0].auth == "certificate"
    assert a.tunnel_names == ["t.pop.example", "c.pop.example"]   # handed back to the PoP's own routing
    assert a.client_ca == f"{tmp_path}/ca.pem"                    # browsers' certificates: the PoP's CA by default
    with pytest.raises(ConfigError, match="publishes no application"):
        load(write(tmp_path, base + section))
    with pytest.raises(ConfigError, match="auth"):
        load(write(tmp_path, base + section + app.replace('"certificate"', '"magic"')))
    with pytest.raises(ConfigError, match="named twice"):
        load(write(tmp_path, base + section + app.replace("App.Corp.Example", "t.pop.example")))


SITES = 'tunnel_name = "t.pop.example"\nconnector_name = "c.pop.example"\nsite_name = "s.pop.example"\n'


def test_sites_load_and_bad_ones_are_refused_with_a_reason(tmp_path):


    cfg, _ = load(write(tmp_path, SITES + 'egress_interface = "eth0"\negress_address = "150.195.219.10"\n\n'
                                 '[sites]\nbranch1 = { lan = ["10.10.0.0/24"] }\nhq = { lan = ["10.20.0.0/16"] }\n'))
    assert [str(n) for n in cfg.sites["hq"].lan] == ["10.20.0.0/16"]
    assert r.route(hello("s.pop.example"), tunnel_name="t.pop.example", connector_name="c.pop.example",
                 site_name=cfg.site_name) == r.Site("s.pop.example")
    for body, why in (
            ('egress_interface = "eth0"\n\n[sites]\na = { lan = ["10.0.0.0/8"] }\nb = { lan = ["10.1.0.0/16"] }\n',
             "overlaps"),
            ('egress_interface = "eth0"\n\n[sites]\na = { lan = [] }\n', "needs lan"),
            ('egress_interface = "eth0"\n\n[sites]\na = { lan = ["10.0.0.300/8"] }\n', "lan"),
            ('\n[sites]\na = { lan = ["10.0.0.0/8"] }\n', "egress_interface")):
        with pytest.raises(ConfigError, match=why):
            load(write(tmp_path, SITES + body))
    with pytest.raises(ConfigError, match="needs \\[pop\\] site_name"):
        load(write(tmp_path, 'tunnel_name = "t.pop.example"\nconnector_name = "c.pop.example"\n\n'
                             '[sites]\na = { lan = ["10.0.0.0/8"] }\n'))


def test_mobile_users_are_one_address_sites_named_user(tmp_path):
    from pop.config import rule_sites

    base = SITES + 'egress_interface = "eth0"\n\n[sites]\nbranch1 = { lan = ["10.10.0.0/24"] }\n\n'
    cfg, _ = load(write(tmp_path, base + '[mobile]\nalice = "10.99.0.10"\n'))
    e = cfg.sites["alice"]
    assert e.name == "user:alice" and [str(n) for n in e.lan] == ["10.99.0.10/32"] and not e.backhaul_gateway
    assert set(rule_sites(cfg)) == {"branch1"}  # a mobile user is a source (user:alice), never a site of the rules
    for body, why in (('[mobile]\nalice = "10.10.0.7"\n', "inside branch1's 10.10.0.0/24"),
                      ('[mobile]\nalice = "10.99.0.0/24"\n', "one IPv4 address"),
                      ('[mobile]\nbranch1 = "10.99.0.1"\n', "also a site"),
                      ('[mobile]\nalice = "10.99.0.1"\nbob = "10.99.0.1"\n', "inside user:alice")):
        with pytest.raises(ConfigError, match=why):
            load(write(tmp_path, base + body))
    with pytest.raises(ConfigError, match="needs \\[pop\\] site_name"):
        load(write(tmp_path, 'tunnel_name = "t.pop.example"\nconnector_name = "c.pop.example"\n\n'
                             '[mobile]\nalice = "10.99.0.10"\n'))
