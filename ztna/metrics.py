"""A Prometheus endpoint for any role: counts kept in plain ints, turned into metrics at scrape time.

Why a custom collector: a role's hot path (the resolver's batch loop, the
proxy's connection end) already counts in dicts and ints; calling a
prometheus_client counter per query would cost a lock and several calls each.
The role hands :class:`Exporter` a function returning :class:`Family` values,
which runs only when Prometheus scrapes.  The HTTP server is prometheus_client's,
on a thread of its own, bound to the one configured address.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .config import ConfigError

COUNTER, GAUGE = "counter", "gauge"

log = logging.getLogger("ztna.metrics")


@dataclass
class Family:
    """One metric: name (without ``_total``), help, type, label names and (label values, value) samples."""

    name: str
    help: str
    kind: str = COUNTER
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def parse_listen(text, where: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` of a metrics endpoint, checked (ConfigError names ``where``)."""
    host, sep, port = str(text).rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]"))
        if not sep or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{where} = {text!r}: write it as 'ADDRESS:PORT', e.g. '127.0.0.1:9153' "
                          "(bind it no wider than the scraper needs)") from None
    return host.strip("[]"), int(port)


def listen_from(data: dict, where: str) -> tuple[str, int] | None:
    """A role's ``[metrics]`` table: ``listen`` parsed, or None when absent (metrics off)."""
    mdoc = data.get("metrics", {})
    if not isinstance(mdoc, dict):
        raise ConfigError(f"{where}: [metrics] must be a table")
    if set(mdoc) - {"listen"}:
        raise ConfigError(f"{where}: [metrics] has unknown key(s) {', '.join(sorted(set(mdoc) - {'listen'}))}; "
                          "known: listen")
    return parse_listen(mdoc["listen"], f"{where}: [metrics] listen") if mdoc.get("listen") else None


class _Collector:
    def __init__(self, families: Callable[[], Iterable[Family]]):
        self.families = families

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for f in self.families():
            cls = CounterMetricFamily if f.kind == COUNTER else GaugeMetricFamily
            m = cls(f.name, f.help, labels=list(f.labels))
            for values, v in f.samples:
                m.add_metric(list(values), v)
            yield m


class Exporter:
    """The endpoint: ``start(address)`` serves ``families()`` at ``/metrics``; ``stop()`` ends it."""

    def __init__(self, families: Callable[[], Iterable[Family]]):
        from prometheus_client import CollectorRegistry

        # A registry of its own: nothing the library registers globally (process, GC) is mixed in
        # unless asked, and two roles in one test process do not collide.
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(families))
        self._server = None

    def start(self, address: tuple[str, int]) -> None:
        from prometheus_client import start_http_server

        self._server, _thread = start_http_server(address[1], addr=address[0], registry=self.registry)

    def render(self) -> str:
        """The exposition text, as a scrape would get it (tests, ``--json`` helpers)."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def serve(families: Callable[[], Iterable[Family]], listen: tuple[str, int] | None) -> "Exporter | None":
    """A role's ``[metrics] listen``: None when unset (off by default), else a started Exporter.

    A port that cannot be had is a configuration error the person can act on."""
    if listen is None:
        return None
    exporter = Exporter(families)
    try:
        exporter.start(listen)
    except OSError as exc:
        raise ConfigError(f"[metrics] listen = '{listen[0]}:{listen[1]}': cannot listen there ({exc.strerror}); "
                          "choose a free port on an address of this host") from None
    log.info("metrics on http://%s:%d/metrics", *listen)
    return exporter
