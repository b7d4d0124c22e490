"""backhaul.config: a gateway site's [backhaul], [wan1], [wan2] and [health]."""

import pytest

from backhaul.config import load
from ztna.config import ConfigError


def write(tmp_path, extra=""):
    for n in ("c.pem", "c.key", "ca.pem"):
        (tmp_path / n).write_text("x")
    p = tmp_path / "site.toml"
    p.write_text(f'[site]\nname = "hq"\npop = "192.0.2.10"\npop_name = "site.pop.example"\ncert = "{tmp_path}/c.pem"\n'
                 f'key = "{tmp_path}/c.key"\nca = "{tmp_path}/ca.pem"\nlan = ["192.168.50.0/24"]\n' + extra)
    return p


WANS = ('[wan1]\ninterface = "wan1"\naddress = "198.18.1.2"\ngateway = "198.18.1.1"\n'
        '[wan2]\ninterface = "wan2"\naddress = "198.18.2.2"\ngateway = "198.18.2.1"\n')


def test_a_branch_site_has_no_gateway_settings(tmp_path):
    cfg = load(write(tmp_path))
    assert cfg.backhaul is None and cfg.wans == {}


def test_an_internet_breakout_gateway(tmp_path):
    cfg = load(write(tmp_path, '[backhaul]\ngateway = true\nport = "auto"\n' + WANS
                     + '[health]\ntarget = "198.18.30.1"\ninterval = 0.5\ntimeout = 0.4\nfail_after = 2\n'))
    assert cfg.backhaul.destination == "internet" and cfg.backhaul.port == "auto"
    assert sorted(cfg.wans) == ["wan1", "wan2"] and cfg.wans["wan2"].gateway == "198.18.2.1"
    assert cfg.health.interval == 0.5 and cfg.health.fail_after == 2 and cfg.health.recover_after == 3


def test_a_local_gateway_ip_gateway(tmp_path):
    cfg = load(write(tmp_path, '[backhaul]\ngateway = true\ndestination = "local"\nlocal_gateway_ip = "192.168.50.254"\n'))
    assert cfg.backhaul.destination == "local" and cfg.backhaul.local_gateway_ip == "192.168.50.254"


@pytest.mark.parametrize("extra, says", [
    ('[backhaul]\ngateway = false\n', "set gateway = true"),
    ('[backhaul]\ngateway = true\ndestination = "cloud"\n', "should be \"internet\""),
    ('[backhaul]\ngateway = true\n', "needs [wan1]"),
    ('[backhaul]\ngateway = true\nport = "wan3"\n' + WANS + '[health]\ntarget = "1.2.3.4"\n', "should be one of"),
    ('[backhaul]\ngateway = true\n' + WANS, "[health] target"),
    ('[backhaul]\ngateway = true\n' + WANS + '[health]\ntarget = "1.2.3.4"\ninterval = 1\ntimeout = 2\n', "timeout"),
    ('[backhaul]\ngateway = true\nport = "wan2"\n' + WANS.split("[wan2]")[0] + '[health]\ntarget = "1.2.3.4"\n',
     "no [wan2]"),
    ('[backhaul]\ngateway = true\ndestination = "local"\n', "needs local_gateway_ip"),
    ('[backhaul]\ngateway = true\nlocal_gateway_ip = "192.168.50.254"\n' + WANS, "is for destination"),
    ('[backhaul]\ngateway = true\n[wan1]\ninterface = "wan1"\naddress = "x"\ngateway = "198.18.1.1"\n', "[wan1] address"),
    ('[backhaul]\ngateway = true\n' + WANS.replace('"wan2"', '"wan1"') + '[health]\ntarget = "1.2.3.4"\n', "same interface"),
    (WANS, "add [backhaul] gateway = true"),
    ('[backhaul]\ngateway = true\nwan = 1\n', "unknown key"),
])
def test_bad_gateway_settings_are_refused_with_what_to_do(tmp_path, extra, says):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, extra))
    assert says in str(e.value)
