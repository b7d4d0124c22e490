"""roaming.toml validation: defaults, every knob, clear errors."""

from pathlib import Path

import pytest

from ztna.config import ConfigError

from agent.roaming import config as cf


def test_defaults():
    c = cf.from_dict({})
    assert c.listen == "127.0.0.1" and c.port == 53
    assert c.cloud == ["208.67.222.222", "208.67.220.220"]
    assert c.fail_open and c.egress == "route"
    assert c.state_file == Path("/var/lib/ztna/roaming/state.json")


def test_full(tmp_path):
    p = tmp_path / "roaming.toml"
    p.write_text('resolv_conf = "/etc/netns/zt-laptop/resolv.conf"\nlisten = "127.0.2.1"\nport = 5353\n'
                 'cloud = ["208.67.222.222"]\ndevice_id = "laptop-7"\ninternal_domains = ["Corp.Example."]\n'
                 'fail_open = false\negress = "learned"\ninterface_dir = "/run/x"\n'
                 '[conflict]\nthreshold = 4\nwindow = 12.5\n[metrics]\nlisten = "127.0.0.1:9155"\n')
    c = cf.load(p)
    assert c.listen == "127.0.2.1" and c.port == 5353 and c.device_id == "laptop-7"
    assert c.internal_domains == ["corp.example"] and not c.fail_open and c.egress == "learned"
    assert c.interface_dir == Path("/run/x")
    assert (c.conflict.threshold, c.conflict.window) == (4, 12.5)
    assert c.metrics_listen == ("127.0.0.1", 9155) and cf.from_dict({}).metrics_listen is None


@pytest.mark.parametrize("doc, words", [
    ({"listen": "192.168.1.10"}, "not a loopback"),
    ({"listen": "nope"}, "not an IP"),
    ({"cloud": []}, "one or more"),
    ({"cloud": ["dns.example"]}, "not an IP"),
    ({"port": 0}, "1 to 65535"),
    ({"egress": "fastest"}, "'route' or 'learned'"),
    ({"conflict": {"threshold": 0}}, "at least 1"),
    ({"conflict": {"retries": 3}}, "threshold"),
    ({"fail_open": "yes"}, "true or false"),
    ({"poll_interval": -1}, "positive"),
    ({"colud": ["1.1.1.1"]}, "unknown setting"),
    ({"metrics": {"listen": "9155"}}, "ADDRESS:PORT"),
    ({"metrics": {"port": 9155}}, "one key"),
])
def test_bad_settings(doc, words):
    with pytest.raises(cf.ConfigError, match=words):
        cf.from_dict(doc)


def test_bad_toml_and_missing_file(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text("listen = \n")
    with pytest.raises(cf.ConfigError, match="not valid TOML"):
        cf.load(p)
    with pytest.raises(cf.ConfigError, match="no such configuration file"):
        cf.load(tmp_path / "absent.toml")
    assert cf.ConfigError is ConfigError  # one error type for every role's configuration
