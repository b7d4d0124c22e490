"""A gateway site's WAN ports: which one backhauled flows leave by, from probe results, sans-IO.

The shell (backhaul/site.py) probes ``[health] target`` out of each WAN port
every ``interval`` seconds, each probe bounded by ``timeout``, and feeds every
result to :meth:`Ports.probe`.  The core answers with commands:

- :class:`UsePort`: new backhauled flows leave by this port from now on (the
  shell changes the mark new connections get; established ones keep theirs);
- :class:`TunnelVia`: the site's own tunnel to the PoP should run over this
  port (sent only when the port the tunnel uses has failed and another is
  healthy: a fail back does not cut a working tunnel);
- ``Log`` lines for every change of a port's health.

A port is healthy until ``fail_after`` probes in a row fail, and healthy again
after ``recover_after`` in a row succeed.  ``mode`` ``"wan1"`` or ``"wan2"``
pins that port whatever its health (the health is still logged);
``"auto"`` uses the first healthy port in preference order (WAN1 first) and
stays where it is when none is healthy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ztna.tunnelcmds import Log

PORTS = ("wan1", "wan2")
MODES = PORTS + ("auto",)


@dataclass(frozen=True)
class UsePort:
    port: str
    reason: str


@dataclass(frozen=True)
class TunnelVia:
    port: str
    reason: str


class Ports:
    def __init__(self, ports: list[str], mode: str = "auto", *, fail_after: int = 3, recover_after: int = 3):
        if not ports or any(p not in PORTS for p in ports) or len(set(ports)) != len(ports):
            raise ValueError(f"ports must be some of {', '.join(PORTS)}, each once; got {ports!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if mode != "auto" and mode not in ports:
            raise ValueError(f"port = {mode!r} but no [{mode}] is configured")
        if fail_after < 1 or recover_after < 1:
            raise ValueError("fail_after and recover_after must be at least 1")
        self.ports = [p for p in PORTS if p in ports]  # preference order: WAN1 first
        self.mode = mode
        self.fail_after = fail_after
        self.recover_after = recover_after
        self.healthy = {p: True for p in self.ports}
        self.fails = {p: 0 for p in self.ports}
        self.goods = {p: 0 for p in self.ports}
        self.active: str | None = None
        self.tunnel: str | None = None
        self.changes = 0

    def start(self) -> list:
        want = self.mode if self.mode != "auto" else self.ports[0]
        self.active = self.tunnel = want
        how = "pinned by port" if self.mode != "auto" else "automatic, preferring " + self.ports[0]
        return [UsePort(want, f"start ({how})"), TunnelVia(want, "start")]

    def probe(self, port: str, ok: bool, detail: str = "") -> list:
        """One probe's result out of ``port``; ``detail`` says why it failed (for the log)."""
        if port not in self.healthy:
            return [Log(logging.WARNING, f"probe result for {port!r}, which is no configured port")]
        cmds: list = []
        if ok:
            self.fails[port] = 0
            self.goods[port] += 1
            if not self.healthy[port] and self.goods[port] >= self.recover_after:
                self.healthy[port] = True
                cmds.append(Log(logging.WARNING, f"{port} healthy again ({self.goods[port]} good probes in a row)"))
        else:
            self.goods[port] = 0
            self.fails[port] += 1
            if self.healthy[port] and self.fails[port] >= self.fail_after:
                self.healthy[port] = False
                cmds.append(Log(logging.WARNING, f"{port} unhealthy: {self.fails[port]} probes in a row failed"
                                                 + (f" (last: {detail})" if detail else "")))
        if not cmds:
            return cmds
        want = self._choose()
        if want != self.active:
            cmds.append(UsePort(want, self._why(want)))
            self.active = want
            self.changes += 1
        if self.tunnel is not None and not self.healthy[self.tunnel]:
            other = next((p for p in self.ports if self.healthy[p]), None)
            if other is not None:
                cmds.append(TunnelVia(other, f"{self.tunnel} is unhealthy"))
                self.tunnel = other
        return cmds

    def _choose(self) -> str:
        if self.mode != "auto":
            return self.mode
        return next((p for p in self.ports if self.healthy[p]), self.active)

    def _why(self, want: str) -> str:
        was = self.active
        if not self.healthy[was]:
            return f"{was} failed {self.fails[was]} probes in a row; {want} is healthy"
        return f"{want} is healthy again ({self.goods[want]} good probes in a row) and preferred"

    def status(self) -> dict:
        return {"mode": self.mode, "active": self.active, "tunnel": self.tunnel,
                "healthy": dict(self.healthy), "changes": self.changes}
