"""A gateway site's data path: backhauled flows from the TUN out of a WAN port, their replies back in.

The PoP sends a backhauled flow into this site's tunnel unchanged (its source is
a remote site's user); ``ztna site run`` writes it to its TUN.  Then, in the
site's own network namespace:

- nftables (table ``ip ztna_site_gw``, owned by the site, removed at exit)
  marks each new connection entering from the TUN with the mark of the port in
  use (chain ``choose``, one rule, swapped in one transaction on a port change),
  so an established connection keeps its port whatever comes later;
- policy routing sends packets of that mark by that port's table: the WAN's
  default route (destination ``internet``) or the LAN's next hop
  ``local_gateway_ip`` (destination ``local``);
- the WAN's SNAT gives them the WAN's address;
- replies (conntrack's reply direction of a marked connection) get the TUN
  mark, and the TUN's table sends them into the TUN, whatever LAN they are for:
  the site needs no list of remote prefixes;
- each WAN address has its own table by source too, so a probe sent from it
  leaves by its own port (the health checks, backhaul/health.py).

``ruleset`` and ``plan`` are pure (unit-tested); :class:`GatewayNet` performs them.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess

from ztna import nft

log = logging.getLogger("ztna.site")
TABLE = "ztna_site_gw"
PORT_INDEX = {"wan1": 1, "wan2": 2, "tun": 3, "local": 4}


def marks(base: int) -> dict[str, int]:
    return {k: base + i for k, i in PORT_INDEX.items()}


def tables(base: int) -> dict[str, int]:
    return {k: base + i for k, i in PORT_INDEX.items()}


def choose_rule(mark: int) -> str:
    return f"ct mark set {mark:#x}"


def ruleset(tun: str, base_mark: int, wans: dict, port: str) -> str:
    """The site's nft table: the mark of new connections from the TUN, routing marks, the WANs' SNAT."""
    m = marks(base_mark)
    out_marks = ", ".join(f"{m[k]:#x}" for k in ("wan1", "wan2", "local"))
    snat = "".join(f"    oifname \"{w.interface}\" ct mark {m[name]:#x} snat to {w.address}\n"
                   for name, w in sorted(wans.items()))
    return (f"table ip {TABLE} {{\n"
            f"  chain choose {{\n    {choose_rule(m[port])}\n  }}\n"
            f"  chain pre {{\n    type filter hook prerouting priority mangle; policy accept;\n"
            f"    iifname \"{tun}\" ct state new jump choose\n"
            f"    iifname \"{tun}\" ct direction original meta mark set ct mark\n"
            f"    iifname != \"{tun}\" ct direction reply ct mark {{ {out_marks} }} meta mark set {m['tun']:#x}\n"
            f"  }}\n"
            f"  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n{snat}  }}\n"
            f"}}\n")


def use_text(base_mark: int, port: str) -> str:
    """One transaction: new connections from the TUN get ``port``'s mark from now on."""
    return f"flush chain ip {TABLE} choose\nadd rule ip {TABLE} choose {choose_rule(marks(base_mark)[port])}\n"


def plan(tun: str, base_table: int, base_mark: int, wans: dict, local_gateway_ip: str = "") -> list[list[str]]:
    """The ``ip`` commands of the policy routing (routes first, then the rules that use them)."""
    t, m = tables(base_table), marks(base_mark)
    cmds = [["route", "replace", "default", "dev", tun, "table", str(t["tun"])]]
    rules = [["rule", "add", "priority", str(base_table), "fwmark", f"{m['tun']:#x}", "lookup", str(t["tun"])]]
    for name, w in sorted(wans.items()):
        cmds.append(["route", "replace", "default", "via", w.gateway, "dev", w.interface, "table", str(t[name])])
        rules.append(["rule", "add", "priority", str(base_table + PORT_INDEX[name]), "fwmark", f"{m[name]:#x}",
                      "lookup", str(t[name])])
        rules.append(["rule", "add", "priority", str(base_table + 4 + PORT_INDEX[name]), "from", w.address,
                      "lookup", str(t[name])])
    if local_gateway_ip:
        cmds.append(["route", "replace", "default", "via", local_gateway_ip, "table", str(t["local"])])
        rules.append(["rule", "add", "priority", str(base_table + PORT_INDEX["local"]), "fwmark", f"{m['local']:#x}",
                      "lookup", str(t["local"])])
    return cmds + rules


class GatewayNet:
    """Performs the plan and the ruleset in the site's namespace; ``down`` removes all of it."""

    def __init__(self, tun: str, cfg):
        self.tun = tun
        self.b = cfg.backhaul
        self.wans = cfg.wans if self.b.destination == "internet" else {}
        self.local = self.b.local_gateway_ip if self.b.destination == "local" else ""
        self.done: list[list[str]] = []

    def up(self, port: str) -> None:
        nft.replace_table(TABLE, ruleset(self.tun, self.b.mark, self.wans, port), what="the gateway site's table")
        self._flush_stale()
        for c in plan(self.tun, self.b.table, self.b.mark, self.wans, self.local):
            _ip(c)
            self.done.append(c)

    def use(self, port: str) -> None:
        nft.apply(use_text(self.b.mark, port), what=f"the gateway site's port {port}")

    def _flush_stale(self) -> None:
        # ip rules of ours left by a crashed run: same priorities, removed before adding anew.
        for prio in range(self.b.table, self.b.table + 9):
            while _ip(["rule", "del", "priority", str(prio)], check=False) == 0:
                pass

    def down(self) -> None:
        for c in reversed(self.done):
            if c[0] == "rule":
                _ip(["rule", "del", *c[2:]], check=False)
        for t in dict.fromkeys(c[-1] for c in self.done if c[0] == "route"):
            _ip(["route", "flush", "table", t], check=False)
        self.done.clear()
        nft.delete_table(TABLE)


def _ip(args: list[str], *, check: bool = True) -> int:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and p.returncode:
        raise OSError(f"ip {' '.join(args)}: {p.stderr.strip()}")
    return p.returncode


async def probe(source: str, target: str, timeout: float) -> tuple[bool, str]:
    """One ICMP echo to ``target`` from ``source`` (so it leaves by that address's port), bounded by ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        "ping", "-n", "-q", "-c", "1", "-W", f"{timeout:g}", "-I", source, target,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout + 1.0)
    except asyncio.TimeoutError:
        proc.kill()  # our own child, by its handle
        await proc.wait()
        return False, f"no answer within {timeout:g}s"
    except asyncio.CancelledError:  # the site is stopping: no ping outlives it
        if proc.returncode is None:
            proc.kill()
        raise
    if proc.returncode == 0:
        return True, ""
    text = err.decode(errors="replace").strip().splitlines()
    return False, text[-1] if text else f"no answer within {timeout:g}s"
