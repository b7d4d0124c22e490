"""The PoP's rule-matching cost (issue 16): the core at 10,000 rules and 100,000 DNS map entries, and the nft set's memory.

``python scripts/bench/backhaul_rules.py [--rules 10000] [--entries 100000] [--seconds 3] [--json]``
(as root for the nft part; scripts/bench.sh backhaul-rules)

core     pop/netrules.py with ``--rules`` rules (firewall and network: a third
         bare CIDRs/addresses, a third ``domain:``, a third ``fqdn:``, sources by
         site or CIDR, some with ports), and pop/dnsmap.py filled with
         ``--entries`` address/name pairs for matched names.  Lookups are
         ``RuleSet.decide`` of new flows to random destinations: a third to
         learnt addresses (matched through the map), a third inside some
         rule's CIDR, a third to nothing (the default exit: every candidate
         list is walked); lookups per second on one core, for each kind and mixed.
dnsmap   answers learnt per second (100,000 distinct addresses), ``names()``
         per second, and the map's Python memory (tracemalloc) at 100,000 entries.
nft      one lab namespace; ``/proc/meminfo`` SUnreclaim + Percpu before a
         timeout set is filled with ``--entries`` elements (``nft -f``, 10,000 a
         line) and after, three rounds (the table deleted in between), the median
         delta per element; the kernel's memory is global, so other work on the
         machine adds noise: the spread of the three rounds is printed too.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import subprocess
import sys
import time
import tracemalloc

from pop import dnsmap, netrules
from pop.sitehub import POP_EGRESS

SITES = {"branch1": netrules.GatewaySite("branch1"), "branch2": netrules.GatewaySite("branch2"),
         "hq": netrules.GatewaySite("hq", True)}


def rules_text(n: int, rnd: random.Random) -> tuple[str, list, list]:
    parts, nets, names = [], [], []
    used: set = set()
    for i in range(n):
        kind = "firewall_rule" if i < n // 10 else "network_rule"
        head = f'[[{kind}]]\nname = "r{i}"\n' + ('action = "block"\n' if kind == "firewall_rule" else
                                                 ('backhaul_via = "hq"\n' if i % 2 else 'routing = "pop-egress"\n'))
        k = i % 3
        if k == 0:
            while True:
                plen = rnd.choice([16, 20, 24, 28, 32])
                net = ipaddress.IPv4Network((rnd.randrange(1 << 32) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF), plen))
                if net not in used:
                    used.add(net)
                    break
            nets.append(net)
            dst = f'"{net}"'
        elif k == 1:
            d = f"d{i}.example"
            names.append(f"www.{d}")
            dst = f'"domain:{d}"'
        else:
            d = f"h{i}.example"
            names.append(d)
            dst = f'"fqdn:{d}"'
        src = rnd.choice(['["site:branch1"]', '["site:branch2", "10.0.0.0/8"]', '["site:branch1", "site:branch2"]'])
        extra = 'protocol = "tcp"\nports = [443, "8000-8080"]\n' if i % 7 == 0 else ""
        parts.append(head + f"source = {src}\ndestination = [{dst}]\n" + extra)
    return "\n".join(parts), nets, names


def rate(fn, items, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    deadline = t0 + seconds
    while True:
        for it in items:
            fn(it)
        n += len(items)
        if time.perf_counter() >= deadline:
            return n / (time.perf_counter() - t0)


def core(n_rules: int, n_entries: int, seconds: float, say) -> dict:
    rnd = random.Random(16)
    text, nets, names = rules_text(n_rules, rnd)
    t0 = time.perf_counter()
    rules = netrules.loads(text, "bench-rules.toml", SITES)
    load_s = time.perf_counter() - t0
    say(f"core: {n_rules} rules compiled in {load_s:.2f}s; filling the DNS map with {n_entries} entries")
    m = dnsmap.DnsMap(n_entries)
    learnt = []
    t0 = time.perf_counter()
    for i in range(n_entries):
        addr = str(ipaddress.IPv4Address(0x0B000000 + i))  # 11.0.0.0 upwards
        m.answered([names[i % len(names)]], [(addr, 3600)], 0.0, rules.name_matches)
        learnt.append(addr)
    learn_rate = n_entries / (time.perf_counter() - t0)
    assert len(m) == n_entries, len(m)
    tracemalloc.start()
    probe = dnsmap.DnsMap(n_entries)
    for i in range(n_entries):
        probe.answered([names[i % len(names)]], [(str(ipaddress.IPv4Address(0x0B000000 + i)), 3600)], 0.0,
                       rules.name_matches)
    map_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del probe

    def flows(kind: str, k: int = 2000) -> list:
        out = []
        for _ in range(k):
            if kind == "dns":
                dst = rnd.choice(learnt)
            elif kind == "cidr":
                net = rnd.choice(nets)
                dst = str(net.network_address + rnd.randrange(net.num_addresses))
            else:
                dst = str(ipaddress.IPv4Address(0xC6336400 + rnd.randrange(256)))  # 198.51.100.0/24: no rule
            out.append((rnd.choice(["branch1", "branch2"]), rnd.choice([6, 17]), f"10.1.{rnd.randrange(256)}.9", dst,
                        rnd.choice([443, 80, 8080])))
        return out

    out = {"rules": n_rules, "entries": n_entries, "compile_s": round(load_s, 3), "map_learn_per_s": round(learn_rate),
           "map_python_bytes": map_bytes, "map_bytes_per_entry": round(map_bytes / n_entries, 1)}
    names_of = m.names
    for kind in ("dns", "cidr", "none"):
        fl = flows(kind)
        got = [rules.decide(*f, 1.0, names_of=names_of) for f in fl[:200]]
        if kind == "none":
            assert all(e.kind == POP_EGRESS and e.network_rule is None for e in got)
        else:
            assert sum(e.network_rule is not None or e.firewall_rule is not None for e in got) > 100, kind
        out[f"decide_per_s_{kind}"] = round(rate(lambda f: rules.decide(*f, 1.0, names_of=names_of), fl, seconds))
        say(f"  decide, destinations {kind:<4}: {out[f'decide_per_s_{kind}']:>9,} lookups/s")
    mixed = flows("dns", 700) + flows("cidr", 700) + flows("none", 700)
    rnd.shuffle(mixed)
    out["decide_per_s_mixed"] = round(rate(lambda f: rules.decide(*f, 1.0, names_of=names_of), mixed, seconds))
    out["names_per_s"] = round(rate(lambda a: names_of(a, 1.0), learnt[:5000], seconds))
    return out


def meminfo() -> int:
    vals = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            vals[k] = int(v.split()[0])
    return (vals["SUnreclaim"] + vals.get("Percpu", 0)) * 1024


def nft_memory(n: int, say) -> dict:
    from netns.lab import Lab
    from netns.topology import Topology

    t = Topology("bench-rules")
    t.host("nft")
    lab = Lab("bench-rules", t)
    deltas, freed, load_times = [], [], []
    try:
        lab.up()
        ns = lab.ns("nft")

        def nft(text: str) -> None:
            p = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True,
                               capture_output=True, timeout=120)
            if p.returncode:
                raise RuntimeError(f"nft: {p.stderr.strip()[:300]}")

        table = (f"table ip {dnsmap.TABLE} {{\n  set net0 {{\n    type ipv4_addr\n    flags timeout\n"
                 f"    size {2 * n}\n  }}\n}}\n")
        chunks = []
        for c in range(0, n, 10_000):
            els = ", ".join(f"{ipaddress.IPv4Address(0x0B000000 + i)} timeout 3600s" for i in range(c, min(n, c + 10_000)))
            chunks.append(f"add element ip {dnsmap.TABLE} net0 {{ {els} }}\n")
        elements = "".join(chunks)
        for r in range(3):
            nft(table)
            time.sleep(0.5)
            before = meminfo()
            t0 = time.perf_counter()
            nft(elements)
            load_times.append(time.perf_counter() - t0)
            time.sleep(0.5)
            after = meminfo()
            p = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "set", "ip", dnsmap.TABLE, "net0"],
                               capture_output=True, text=True, timeout=60)
            count = p.stdout.count("expires")
            nft(f"delete table ip {dnsmap.TABLE}\n")
            time.sleep(1.0)  # the kernel frees set elements after an RCU grace period
            gone = meminfo()
            deltas.append(after - before)
            freed.append(after - gone)
            say(f"nft round {r + 1}: {count} elements listed; +{(after - before) / 1024:.0f} KiB for them, "
                f"{(after - gone) / 1024:.0f} KiB back after the table's delete; loaded in {load_times[-1]:.2f}s")
    finally:
        lab.down()
    med = statistics.median(deltas)
    return {"elements": n, "kib_median": round(med / 1024), "bytes_per_element": round(med / n, 1),
            "kib_rounds": [round(d / 1024) for d in deltas], "kib_freed_rounds": [round(d / 1024) for d in freed],
            "load_s_median": round(statistics.median(load_times), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--no-nft", action="store_true", help="only the core (no root needed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    res = {"core": core(a.rules, a.entries, a.seconds, say)}
    if not a.no_nft:
        res["nft"] = nft_memory(a.entries, say)
    if a.json:
        print(json.dumps(res, indent=2))
        return
    c = res["core"]
    print()
    print(f"rules core: {c['rules']} rules (compiled in {c['compile_s']}s), {c['entries']} DNS map entries, one core")
    for k in ("dns", "cidr", "none", "mixed"):
        print(f"  decide, {k:<5} destinations  {c[f'decide_per_s_{k}']:>10,} lookups/s")
    print(f"  DnsMap.names                {c['names_per_s']:>10,} lookups/s")
    print(f"  DnsMap.answered             {c['map_learn_per_s']:>10,} entries/s learnt")
    print(f"  DnsMap memory               {c['map_python_bytes'] / 1048576:>10.1f} MiB ({c['map_bytes_per_entry']} B/entry)")
    if "nft" in res:
        n = res["nft"]
        print(f"nft timeout set, {n['elements']} elements: {n['kib_median']} KiB of kernel memory "
              f"(median of {n['kib_rounds']} KiB; {n['bytes_per_element']} B/element), loaded in {n['load_s_median']}s")


if __name__ == "__main__":
    main()
