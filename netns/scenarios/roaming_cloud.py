"""The cloud resolver for the roaming scenarios: the project's DNS security
resolver (``ztna dns run``) on 208.67.222.222 and 208.67.220.220, forwarding to
the lab's public zone server and blocking malware.bad.example.  The roaming
laptop's device id picks its own policy, which the resolver's query log shows.
"""

from __future__ import annotations

from pathlib import Path

from .. import evidence, procs
from ..lab import Lab

BLOCK_PAGE = "192.0.2.80"


def dns_toml(lab: Lab, upstream: str) -> str:
    return f"""[server]
listen = ["208.67.222.222", "208.67.220.220"]
upstreams = ["{upstream}"]
upstream_timeout = 1.0
query_log = "{lab.log_dir / 'cloud-queries.jsonl'}"

[blockpage]
address = "{BLOCK_PAGE}"
serve = false

[categories.domains]
"malware.bad.example" = ["malware"]

[[policy]]
name = "lab-networks"
networks = ["192.168.1.0/24", "198.51.100.0/24", "203.0.113.0/24"]
block_categories = ["malware"]

[[policy]]
name = "roaming-laptops"
devices = ["laptop-1"]
block_categories = ["malware", "phishing", "command-and-control"]
"""


def start(lab: Lab, zones: dict[str, Path], upstream: str = "198.51.100.53") -> str:
    conf = lab.write_conf("dns.toml", dns_toml(lab, upstream))
    p = lab.start("cloud", procs.ztna_argv("dns", "run", "--config", str(conf)), name="cloud")
    procs.wait_listening(p, "208.67.222.222", 53, "udp")
    return "dns-security"


def query_log(lab: Lab) -> list[dict]:
    return evidence.json_lines(lab.log_dir / "cloud-queries.jsonl")