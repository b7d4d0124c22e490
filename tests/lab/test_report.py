"""Every scenario's report.html, rendered by headless Chromium and checked from its DOM.

The module runs each registered scenario once (a scenario added later is
covered without a change here), plus the agent scenario with its gateway
stopped, and opens each report from its file:// URL in one headless Chromium.
The screenshots stay beside the reports (``report.png``, ``sequence.png``).
Chromium runs in the root namespace reading a local file; it must make no
network request, and the checks below say so from Chrome's own logs.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from netns import procs, scenarios
from netns.htmlreport import FAIL_COLOUR, PASS_COLOUR
from netns.scenario import run
from netns.scenarios.agent import AgentScenario

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


class AgentGatewayDown(AgentScenario):
    """The agent flow with the gateway stopped before the user's action: the tunnel's steps must FAIL."""

    name = "agent-gateway-down"

    def drive(self, lab):
        # After the captures started (its TUN must exist when tcpdump opens it); by its PID,
        # kept in lab.procs so that verify() still reads its log.
        procs.stop(lab.procs["gateway"])
        return super().drive(lab)


def _rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (ok, report folder) for every scenario and the failing agent run."""
    root = tmp_path_factory.mktemp("report-runs")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZTNA_LAB_DIR", str(root))
        for sc in [scenarios.get(n) for n in scenarios.all_scenarios()] + [AgentGatewayDown()]:
            lines: list[str] = []
            ok, steps, report = run(sc, say=lines.append, color=False)
            assert report is not None, f"{sc.name} wrote no report:\n" + "\n".join(lines[-40:])
            out[sc.name] = (ok, report.parent)
    return out


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (scripts/install.sh installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
              "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield drv
    finally:
        drv.quit()


DOM = """
const steps = {};
for (const g of document.querySelectorAll('svg.sequence g.arrow')) {
  const n = g.dataset.step;
  const line = g.querySelector('.line');
  (steps[n] = steps[n] || []).push({verdict: g.dataset.verdict, stroke: getComputedStyle(line).stroke,
                                    from: g.dataset.from, to: g.dataset.to});
}
const bands = [...document.querySelectorAll('svg.sequence g.step')].map(g => ({
  step: g.dataset.step, verdict: g.dataset.verdict, fill: getComputedStyle(g.querySelector('rect')).fill}));
const reasons = [...document.querySelectorAll('svg.sequence text.reason')].map(t => [t.dataset.step, t.textContent]);
return {lifelines: [...document.querySelectorAll('svg.sequence g.lifeline')].map(g => g.dataset.host),
        arrows: steps, bands: bands, reasons: reasons,
        cells: [...document.querySelectorAll('table.grid td.cell')].map(td => [td.dataset.step, td.dataset.verdict, td.title]),
        resources: performance.getEntriesByType('resource').map(e => e.name)};
"""


def render(browser, folder: Path) -> dict:
    browser.get_log("performance")  # drop what earlier pages logged
    url = (folder / "report.html").as_uri()
    browser.get(url)
    dom = browser.execute_script(DOM)
    requested = [json.loads(e["message"])["message"]["params"]["request"]["url"]
                 for e in browser.get_log("performance") if '"Network.requestWillBeSent"' in e["message"]]
    dom["requested"] = requested
    dom["url"] = url
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    browser.set_window_size(max(width, 1000), min(height + 40, 16000))
    browser.save_screenshot(str(folder / "report.png"))
    browser.find_element("css selector", "svg.sequence").screenshot(str(folder / "sequence.png"))
    browser.set_window_size(1400, 1000)
    return dom


def check(dom: dict, doc: dict, html: str) -> None:
    hosts = [h["name"] for h in doc["topology"]["hosts"]]
    assert dom["lifelines"] == hosts, "one lifeline per host, in the topology's order"
    for s in doc["steps"]:
        arrows = dom["arrows"].get(s["number"], [])
        assert len(arrows) == len(s["items"]), f"step {s['number']}: one arrow per evidence item"
        if s["ok"]:
            assert arrows, f"step {s['number']} passed but has no arrow"
        want = "pass" if s["ok"] else "fail"
        colour = _rgb(PASS_COLOUR if s["ok"] else FAIL_COLOUR)
        assert all(a["verdict"] == want and a["stroke"] == colour for a in arrows), f"step {s['number']}: {arrows}"
        assert all(a["from"] in hosts and a["to"] in hosts for a in arrows)
    assert [(b["step"], b["verdict"]) for b in dom["bands"]] == [(s["number"], "pass" if s["ok"] else "fail") for s in doc["steps"]]
    assert {b["fill"] for b in dom["bands"] if b["verdict"] == "pass"} <= {_rgb("#dafbe1")}
    failed = [s["number"] for s in doc["steps"] if not s["ok"]]
    assert [r[0] for r in dom["reasons"]] == failed
    assert all(r[1].startswith("not observed: ") for r in dom["reasons"])
    cells = [s for s in doc["steps"] if s.get("cell")]
    assert [c[0] for c in dom["cells"]] == [s["number"] for s in cells]  # the grid is filled row by row, as asked
    assert all(c[1] == ("pass" if s["ok"] else "fail") and c[2] == "\n".join(s["evidence"]) for c, s in zip(dom["cells"], cells))
    # Nothing but the page itself was requested, and the file names no resource elsewhere.
    assert dom["resources"] == []
    assert dom["requested"] == [dom["url"]]
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*[a-z]+:""", html)
    assert not re.search(r"url\(\s*['\"]?\s*(?!#)", html) and "<script" not in html


def test_every_scenario_report_renders_with_its_steps_and_verdicts(runs, browser):
    assert set(scenarios.all_scenarios()) <= set(runs)
    for name, (ok, folder) in runs.items():
        doc = json.loads((folder / "report.json").read_text())
        dom = render(browser, folder)
        check(dom, doc, (folder / "report.html").read_text())
        assert (folder / "sequence.png").stat().st_size > 1000
        if name != AgentGatewayDown.name:
            assert ok, f"{name}: {[(s['number'], s['ok']) for s in doc['steps']]}"


def test_the_report_of_a_run_with_the_gateway_down_shows_the_tunnel_steps_failed(runs, browser):
    ok, folder = runs[AgentGatewayDown.name]
    assert not ok
    doc = json.loads((folder / "report.json").read_text())
    verdicts = {s["number"]: s["ok"] for s in doc["steps"]}
    assert verdicts["1"] and verdicts["3"] and verdicts["4"], "DNS still works without the gateway"
    assert not verdicts["5"] and not verdicts["9"]
    dom = render(browser, folder)
    reasons = dict(dom["reasons"])
    assert reasons["5"].startswith("not observed: agent and gateway build a TLS 1.3 mutual-TLS tunnel")
    assert "no TLS handshake" in reasons["5"]
    assert [a["verdict"] for a in dom["arrows"]["5"]] == ["fail", "fail"]  # the SYN, and the RST that answered it
    assert "curl exit" in dict(dom["reasons"])["9"]


def test_lab_report_draws_a_kept_run_again(runs):
    from click.testing import CliRunner

    from netns.cli import lab

    _, folder = runs["agent"]
    before = (folder / "report.html").read_text()
    (folder / "report.html").unlink()
    res = CliRunner().invoke(lab, ["report", "agent", "--dir", str(folder)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(folder / "report.html")
    assert (folder / "report.html").read_text() == before
