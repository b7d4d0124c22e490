"""dig, the lab's DNS client: run it inside a lab host and read what it printed.

Every scenario and lab test asks through here, so a change in how dig prints
(or times out) is handled once.
"""

from __future__ import annotations

import ipaddress
import re


def norm_rdata(rtype: str, text: str) -> str:
    """Record data as compared in checks: addresses in canonical form, anything else folded and lower case."""
    text = " ".join(text.split())
    if rtype in ("A", "AAAA"):
        ip = ipaddress.ip_address(text)
        mapped = getattr(ip, "ipv4_mapped", None)
        return f"::ffff:{mapped}" if mapped else str(ip)
    return text.lower()


def parse(text: str) -> dict:
    """status, id, answer records [(name, type, rdata, ttl)], EDE line and flags from dig's full output.

    ``status`` is the RCODE dig printed, ``TIMEOUT`` when no server answered,
    or None when dig printed neither."""
    out: dict = {"status": None, "id": None, "answers": [], "ede": "", "flags": "", "raw": text}
    m = re.search(r"status: (\w+), id: (\d+)", text)
    if m:
        out["status"], out["id"] = m.group(1), int(m.group(2))
    elif "connection timed out" in text or "communications error" in text or "no servers could be reached" in text:
        out["status"] = "TIMEOUT"
    m = re.search(r";; flags: ([a-z ]+);", text)
    if m:
        out["flags"] = m.group(1)
    m = re.search(r"; EDE: (.*)", text)
    if m:
        out["ede"] = m.group(1)
    sect = re.search(r";; ANSWER SECTION:\n(.*?)(?:\n\n|\Z)", text, re.S)
    if sect:
        for line in sect.group(1).splitlines():
            p = line.split(None, 4)
            if len(p) == 5:
                out["answers"].append((p[0].rstrip(".").lower(), p[3], norm_rdata(p[3], p[4]), int(p[1])))
    return out


def ask(lab, host: str, *args: str, timeout: float = 20) -> dict:
    """``dig +tries=1 +time=3 ARGS`` on ``host``, parsed (``parse``)."""
    r = lab.exec(host, ["dig", "+tries=1", "+time=3", *args], timeout=timeout)
    return parse(r.stdout.decode(errors="replace"))


def addresses(d: dict) -> list[str]:
    """The A records of a parsed answer."""
    return [rdata for _, rtype, rdata, _ in d["answers"] if rtype == "A"]


def short(lab, host: str, name: str, *args: str, server: str | None = None) -> str:
    """``dig +short`` for ``name`` (more dig ``args``; through ``server`` if given), as one stripped string."""
    argv = ["dig", "+short", "+time=2", "+tries=1", *args, name] + ([f"@{server}"] if server else [])
    return lab.exec(host, argv, timeout=30).stdout.decode(errors="replace").strip()
