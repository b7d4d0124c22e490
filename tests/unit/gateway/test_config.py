"""gateway/config.py: the CRL and [metrics] settings, and their refusals."""

import pytest

from gateway.config import load
from ztna import crl, pki
from ztna.config import ConfigError


@pytest.fixture
def conf(tmp_path):
    ca = pki.new_ca("ca", now=pki.utcnow())
    pki.save(ca, tmp_path, "ca")
    pki.save(pki.issue(ca, "gw", kind="gateway", now=pki.utcnow()), tmp_path, "gw")
    (tmp_path / "crl.pem").write_bytes(crl.render(ca, {}, now=pki.utcnow()))

    def write(extra_gateway="", tail=""):
        p = tmp_path / "gateway.toml"
        p.write_text(f'[gateway]\nlisten = "127.0.0.1"\ncert = "{tmp_path}/gw.pem"\nkey = "{tmp_path}/gw.key"\n'
                     f'ca = "{tmp_path}/ca.pem"\nprivate_dns = ["127.0.0.53"]\n{extra_gateway}\n'
                     f'[policy]\nalice = ["app.x.net"]\n{tail}')
        return p
    write.dir = tmp_path
    return write


def test_crl_and_metrics_are_read(conf):
    cfg, policy = load(conf(f'crl = "{conf.dir}/crl.pem"', '[metrics]\nlisten = "127.0.0.1:9190"\n'))
    assert cfg.crl.endswith("crl.pem") and cfg.metrics_listen == ("127.0.0.1", 9190)
    assert policy.source == {"alice": ["app.x.net"]}
    assert load(conf())[0].metrics_listen is None  # off by default


@pytest.mark.parametrize("extra, tail, why", [
    ('crl = "/nonexistent/crl.pem"', "", "cannot read it"),
    ('crl = "{dir}/ca.pem"', "", "not a PEM certificate revocation list"),
    ("", '[metrics]\nlisten = "somewhere"\n', "write it as 'ADDRESS:PORT'"),
    ("", '[metrics]\nport = 1\n', "[metrics] has unknown key(s) port"),
])
def test_bad_crl_or_metrics_settings_are_refused(conf, extra, tail, why):
    with pytest.raises(ConfigError, match=None) as exc:
        load(conf(extra.format(dir=conf.dir), tail))
    assert why in str(exc.value)
