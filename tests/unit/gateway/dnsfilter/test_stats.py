import json

from click.testing import CliRunner

from gateway.dnsfilter import querylog, stats
from gateway.dnsfilter.cli import dns

RECORDS = [
    {"time": 10.0, "client": "198.51.100.10", "identity": "198.51.100.10", "policy": "office", "name": "malware.bad.example",
     "type": "A", "decision": "blocked", "category": "malware", "action": "blockpage", "rcode": "NOERROR", "latency_ms": 0.2},
    {"time": 11.0, "client": "198.51.100.10", "identity": "laptop-1", "policy": "roaming", "name": "malware.bad.example",
     "type": "TXT", "decision": "blocked", "category": "malware", "action": "refused", "rcode": "REFUSED", "latency_ms": 0.3},
    {"time": 12.0, "client": "198.51.100.11", "identity": "198.51.100.11", "policy": "office", "name": "listed.bad.example",
     "type": "A", "decision": "blocked", "category": "corp-block", "action": "blockpage", "rcode": "NOERROR", "latency_ms": 0.1},
    {"time": 13.0, "client": "198.51.100.11", "identity": "198.51.100.11", "policy": "office", "name": "www.good.example",
     "type": "A", "decision": "allowed", "rcode": "NOERROR", "latency_ms": 3.0},
    {"time": 14.0, "client": "198.51.100.66", "identity": "198.51.100.66", "decision": "rate-limited", "rcode": "DROP", "dropped": 5},
    {"time": 15.0, "client": "198.51.100.66", "identity": "198.51.100.66", "decision": "rate-limited", "rcode": "DROP", "dropped": 900},
]


def test_summary_counts():
    s = stats.summarize(RECORDS)
    assert s["queries"] == 6
    assert s["by_decision"] == {"blocked": 3, "rate-limited": 2, "allowed": 1}
    assert s["by_category"] == {"malware": 2, "corp-block": 1}
    assert s["by_action"] == {"blockpage": 2, "refused": 1}
    assert s["by_identity"]["198.51.100.11"] == 2 and s["by_identity"]["laptop-1"] == 1
    assert s["top_blocked"][0] == ("malware.bad.example", 2)
    assert s["rate_limited_drops"] == {"198.51.100.66": 905}
    assert s["latency_ms"]["p50"] == 0.3
    text = stats.render(s)
    assert "malware.bad.example" in text and "by decision" in text and "198.51.100.66" in text


def test_log_roundtrip_and_cli(tmp_path):
    path = tmp_path / "q.jsonl"
    log = querylog.QueryLog(path)
    for r in RECORDS:
        log.write(r)
    log.close()
    with open(path, "a") as f:
        f.write('{"cut short')     # a crash can leave half a line
    assert list(querylog.read(path)) == RECORDS
    out = CliRunner().invoke(dns, ["stats", "--log", str(path), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["by_decision"]["blocked"] == 3
    out = CliRunner().invoke(dns, ["stats"])
    assert out.exit_code != 0 and "--config" in out.output
