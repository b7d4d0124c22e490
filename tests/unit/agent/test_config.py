import pytest

from agent.config import load
from ztna.config import ConfigError


def write(tmp_path, body):
    for f in ("a.pem", "a.key", "ca.pem"):
        (tmp_path / f).write_text("x")
    p = tmp_path / "agent.toml"
    p.write_text(f'[agent]\ncert = "{tmp_path}/a.pem"\nkey = "{tmp_path}/a.key"\nca = "{tmp_path}/ca.pem"\n'
                 f'gateway = "gateway.mycompany.net"\n{body}')
    return p


def test_a_good_file_loads_and_derives_the_patterns(tmp_path):
    cfg = load(write(tmp_path, 'apps = ["app.mycompany.net", "*.apps.mycompany.net"]\n'))
    assert cfg.patterns.match("x.apps.mycompany.net") == "*.apps.mycompany.net"
    assert (cfg.max_leases, cfg.max_leases_per_wildcard) == (4096, 256)  # the documented defaults


@pytest.mark.parametrize("body,msg", [
    ('apps = ["app.mycompany.net"]\npatterns = 1\n', "unknown key"),  # derived fields are not settings
    ('apps = ["app.mycompany.net"]\ndns_ttl = "ten"\n', "should be an integer"),
    ('apps = ["*.mycompany.net"]\n', "gateway's own name"),
    ('apps = []\n', "apps is empty"),
    ('apps = ["app.mycompany.net"]\ndns_stub = "10.0.0.2"\n', "not inside network"),
    ('apps = ["a*b.mycompany.net"]\n', "wildcard"),
    ('apps = ["app.mycompany.net"]\nmax_leases_per_wildcard = 0\n', "max_leases_per_wildcard = 0 must be at least 1"),
])
def test_bad_settings_are_refused_by_name(tmp_path, body, msg):
    with pytest.raises(ConfigError, match=msg):
        load(write(tmp_path, body))


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path / "bad.toml")


def test_full_tunnel_internet_section(tmp_path):
    apps = 'apps = ["app.mycompany.net"]\n\n'
    inet = '[internet]\npop = "192.0.2.10"\npop_name = "site.pop.example"\naddress = "10.99.0.10"\n'
    cfg = load(write(tmp_path, apps + inet))
    assert (cfg.internet.pop, cfg.internet.address, cfg.internet.tun, cfg.internet.mode) == \
        ("192.0.2.10", "10.99.0.10", "ztna-inet0", "full")
    assert load(write(tmp_path, apps)).internet is None  # split tunnel: private apps only
    for extra, why in (('mode = "split"\n', "only \"full\""),
                       ('tun = 3\n', "should be a string")):
        with pytest.raises(ConfigError, match=why):
            load(write(tmp_path, apps + inet + extra))
    for bad, why in (('address = "100.96.0.10"', "inside the private apps' network"),
                     ('address = "nope"', "should be an IPv4 address"),
                     ('pop = "pop.example"', "should be an IPv4 address")):
        key = bad.split(" ")[0]
        text = "\n".join(bad if line.startswith(key + " ") else line for line in inet.splitlines()) + "\n"
        with pytest.raises(ConfigError, match=why):
            load(write(tmp_path, apps + text))
    with pytest.raises(ConfigError, match="needs 'address'"):
        load(write(tmp_path, apps + '[internet]\npop = "192.0.2.10"\npop_name = "site.pop.example"\n'))
