"""The agentless front checks browser client certificates against the gateway's CRL (issue 20).

carol signs in to hr.mycompany.net with a client certificate; once revoked,
her new connections are refused with a log line that says "revoked", and
alice's agent, through the tunnel on the same port, is untouched.
"""

from pathlib import Path

import pytest

from netns import procs
from netns.lab import started
from netns.scenarios.agentless import APP, HR, AgentlessScenario
from tests.lab.legit import Legit
from ztna import crl, pki

pytestmark = pytest.mark.lab


class AgentlessWithCrl(AgentlessScenario):
    name = "agentless-crl"

    def gateway_conf(self, lab):
        path = lab.pki_dir / "crl.pem"  # before the file names it: `gateway user add` loads it first
        if not path.exists():
            pki.write_pem(path, crl.render(lab.ca(), {}, now=pki.utcnow()), private=False)
        return super().gateway_conf(lab).replace("[policy]", f'crl = "{path}"\n\n[policy]', 1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(AgentlessWithCrl(), tmp_path_factory.mktemp("agentless-crl")) as lab:
        yield lab


def test_a_revoked_browser_certificate_is_refused_on_its_next_connection(lab):
    carol = ["--cert", str(lab.pki_dir / "carol.pem"), "--key", str(lab.pki_dir / "carol.key"), f"https://{HR}/"]
    rc, out, _ = lab.sc.curl(lab, *carol, host="browser")
    assert rc == 0 and "(X-Ztna-User): carol" in out
    gwlog = Path(lab.procs["gateway"].log)
    alice = ["curl", "-sS", "--max-time", "10", "--cacert", str(lab.pki_dir / "internal-ca.pem"), f"https://{APP}/"]
    with Legit(lab, "client", alice, check=lambda rc, out: rc == 0) as user:  # an agent user, through the tunnel
        r = lab.exec("gateway", procs.ztna_argv("pki", "revoke", "--dir", str(lab.pki_dir), "carol"))
        assert r.returncode == 0, r.stderr
        procs.wait_until(lambda: "CRL" in gwlog.read_text() and "1 new" in gwlog.read_text(),
                         what="the gateway to read the new CRL")
        rc, out, err = lab.sc.curl(lab, *carol, host="browser")
        assert rc != 0 and "carol" not in out, (rc, out, err)
        text = gwlog.read_text()
        assert "refused: client certificate of carol" in text and "is revoked" in text, text[-1500:]
    user.assert_clean()
