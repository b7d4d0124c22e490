"""The PoP enforces the CA's CRL (issue 20, "and later the PoP"): a revoked agent's live tunnel ends, its
reconnects are refused with "revoked", and another agent's tunnel is not touched."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from netns import procs
from netns.lab import Lab
from netns.scenarios.pop_agent import APP, PopAgentScenario
from ztna import crl, pki


class Rig(PopAgentScenario):
    name = "pop-revocation"

    def pop_extra(self, lab):
        return f'crl = "{lab.pki_dir}/crl.pem"\n'


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    sc = Rig()
    lab = Lab(sc.name, sc.topology(), root=tmp_path_factory.mktemp("lab"))
    lab.up()
    try:
        lab.ca()
        pki.write_pem(lab.pki_dir / "crl.pem", crl.render(lab.ca(), {}, now=pki.utcnow()), private=False)
        sc.start(lab)
        sc.start_gateway(lab)
        lab.sc = sc
        yield lab
    finally:
        lab.down()


def poplog(lab) -> str:
    return Path(lab.procs["pop"].log).read_text(errors="replace")


def curl(lab, host="client"):
    r = lab.exec(host, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "8",
                        "--cacert", str(lab.pki_dir / "ca.pem"), f"https://{APP}/"], timeout=15)
    return r.returncode, r.stdout.decode()


def test_revoking_alice_ends_her_tunnel_and_refuses_her_reconnects_and_bob_stays(lab):
    assert curl(lab) == (0, "200")
    curl(lab, "client2")  # bob's tunnel comes up on demand (the PoP's policy then refuses his lease)
    agents = dict(re.findall(r"agent (\d+) from \S+: identity (\w+)", poplog(lab)))
    assert set(agents.values()) >= {"alice", "bob"}, agents
    bob_id = next(i for i, who in agents.items() if who == "bob")
    t0 = time.monotonic()
    r = lab.exec("pop", procs.ztna_argv("pki", "revoke", "--dir", str(lab.pki_dir), "alice"))
    assert r.returncode == 0, r.stderr
    procs.wait_until(lambda: re.search(r"agent \d+ alice: ended: certificate revoked", poplog(lab)), timeout=10,
                     what="the PoP to end alice's tunnel")
    print(f"\nrevoke -> the PoP ended alice's tunnel: {time.monotonic() - t0:.2f} s")
    rc, _ = curl(lab)
    assert rc != 0  # her new flows find no tunnel: every reconnect is refused
    procs.wait_until(lambda: re.search(r"agent TLS: certificate of alice \(serial [0-9a-f]+\) is revoked", poplog(lab)),
                     timeout=15, what="a reconnect refused as revoked")
    assert f"agent {bob_id} closed" not in poplog(lab)  # bob's tunnel was not touched
    assert lab.procs["pop"].alive()


def test_a_corrupt_crl_keeps_the_old_revocations(lab):
    (lab.pki_dir / "crl.pem").write_text("-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
    procs.wait_until(lambda: "error: CRL not taken" in poplog(lab), timeout=5, what="the PoP to refuse the corrupt CRL")
    assert "1 revoked serial(s) read before stay in force" in poplog(lab)
    assert lab.procs["pop"].alive()
    rc, _ = curl(lab)
    assert rc != 0  # alice is still revoked: a corrupt file un-revokes nobody
