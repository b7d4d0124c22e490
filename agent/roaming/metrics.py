"""The roaming client's metrics: where its stub sent queries, and the state of its DNS, at scrape time.

Pure: ``families`` takes a :class:`Snapshot`; the daemon (``Daemon.metric_families``) takes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ztna.metrics import COUNTER, GAUGE, Family

ROUTES = ("internal", "cloud", "fail_open")  # where a query was answered from
REFUSALS = {"servfail": "servfail", "formerr": "malformed"}  # what the stub answered itself


@dataclass(frozen=True)
class Snapshot:
    queries: dict          # Forwarder.counters.to_dict()
    owning: bool           # the client's stub is the host's resolver now
    cloud_up: bool
    backed_off: bool       # gave way to other DNS software (the VPN conflict)
    foreign_rewrites: int  # times another program rewrote resolv.conf under it


def families(s: Snapshot) -> list[Family]:
    q = s.queries
    return [
        Family("ztna_roaming_queries", "Queries the stub forwarded, by where they went", COUNTER, ("route",),
               [((r,), q.get(r, 0)) for r in ROUTES]),
        Family("ztna_roaming_refusals", "Queries the stub answered itself with an error, by reason", COUNTER,
               ("reason",), [((v,), q.get(k, 0)) for k, v in REFUSALS.items()]),
        Family("ztna_roaming_owning", "1 while the stub is the host's resolver", GAUGE, (), [((), int(s.owning))]),
        Family("ztna_roaming_cloud_up", "1 while the cloud resolver answers its probes", GAUGE, (),
               [((), int(s.cloud_up))]),
        Family("ztna_roaming_backed_off", "1 while the client has given way to other DNS software", GAUGE, (),
               [((), int(s.backed_off))]),
        Family("ztna_roaming_foreign_rewrites", "Rewrites of the resolver file by other programs", COUNTER, (),
               [((), s.foreign_rewrites)]),
    ]
