"""``ztna lab run pop-agentless``: browser -> PoP (sign-in, policy) -> stream channel -> gateway -> app, from captures."""

from netns.scenario import run
from netns.scenarios.pop_agentless import PopAgentlessScenario


def test_every_step_is_observed(tmp_path, monkeypatch):
    monkeypatch.setenv("ZTNA_LAB_DIR", str(tmp_path / "run"))
    lines = []
    ok, steps, report = run(PopAgentlessScenario(), say=lines.append, color=False)
    assert ok, "\n".join(lines)
    assert [s.number for s in steps] == [str(i) for i in range(1, 10)]
    assert all(s.evidence for s in steps)
    assert report is not None and report.exists()


def test_headless_chromium_through_the_pop(tmp_path):
    """A real browser: sign-in page from the PoP, the app through the connector, reload, logout, and bob refused."""
    import json
    import shutil
    import sys
    from pathlib import Path

    import pytest

    from netns.lab import Lab
    from netns.scenarios.agentless import USERS
    from netns.scenarios.pop_agentless import APP

    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("chromium and chromium-driver are not installed: run scripts/install.sh")
    sc = PopAgentlessScenario()
    lab = Lab(sc.name, sc.topology(), root=tmp_path / "lab")
    lab.up()
    try:
        sc.start(lab)
        gw = sc.start_gateway(lab)
        poplog = Path(lab.procs["pop"].log)
        shots = tmp_path / "shots"
        script = Path(__file__).parent / "browser_agentless.py"
        r = lab.exec("browser", [sys.executable, str(script), str(lab.pki_dir / "ca.pem"), str(shots),
                                 json.dumps(USERS)], timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        got = json.loads(r.stdout)
        assert "error" not in got, got
        pages = {p["step"]: p for p in got["pages"]}
        assert pages["login"]["url"].endswith("/.ztna/login?next=/"), pages["login"]
        for step in ("app", "reload"):
            assert pages[step]["url"] == f"https://{APP}/", pages[step]
            assert "identity asserted by the gateway (X-Ztna-User): alice" in pages[step]["text"], pages[step]
        assert "You are signed out." in pages["logout"]["text"], pages["logout"]
        assert pages["after-logout"]["url"].endswith("/.ztna/login?next=/"), pages["after-logout"]
        assert "403 Forbidden" in pages["forbidden"]["text"] and "Signed in as bob" in pages["forbidden"]["text"], \
            pages["forbidden"]
        for p in got["pages"]:
            assert Path(p["screenshot"]).stat().st_size > 1000
        # The PoP, not the gateway, signed the users in: its access log has both, the gateway never saw bob.
        gwlog = Path(gw.log).read_text(errors="replace")
        assert "bob" not in gwlog
        popaccess = poplog.read_text(errors="replace")
        assert "alice" in popaccess and "bob" in popaccess
    finally:
        lab.down()
