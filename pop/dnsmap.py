"""Which names the PoP's own DNS answers gave each address, for the rules' ``domain:`` and ``fqdn:`` (sans-IO).

Theory of operation
-------------------
The PoP's DNS forwarder (pop/dns.py) hands every answer it gives a site's
users, from upstream or from its cache, to :meth:`DnsMap.answered`: the
question's name and its CNAME chain, and the A records with their TTLs (a
cached answer's TTLs counted down, so an answer from the cache refreshes an
entry just as a fresh one does).  Only names some rule covers are kept
(``matches``): an address answered only for unmatched names costs nothing.

An entry is (address, name) -> expiry = now + TTL (at least ``min_ttl``, so
the connection that follows a TTL-0 answer still matches; at most
``max_ttl``).  Answered again, the expiry moves to the later of the two.
:meth:`names` gives an address's live names; :meth:`expire` drops the dead
ones (a heap by expiry, rebuilt when refreshes have left it twice too long).

The map is capped at ``max_entries`` entries.  When it is full, expired
entries go first; if it is still full the new entry is refused and counted
(``entries_refused``), and one log line says the cap was reached (once, until
the map is below 90 % again).  So an answer flood of distinct addresses for a
matched domain costs at most the cap, never more memory.

**An address shared by a matched and an unmatched name** (a CDN serving both
``app.saas.example`` and ``www.other.example`` from one address): the PoP
sees an address, not the name a flow was for, so the matched name wins: while
its entry lives, every new flow to that address takes its rule, whatever name
the user asked for.  Two matched names of different rules on one address:
both names are tried and the lower rule wins (first match), as for any flow.

Addresses of names some rule covers are also put in nftables sets (table
``ip ztna_pop_rules``, one set per rule with a ``domain:``/``fqdn:``
destination, named ``fw<N>`` / ``net<N>`` by the rule's kind and position,
its comment the rule's name), each element with the timeout of its longest
live entry, the sets sized past the cap.  :func:`table_text` and
:func:`elements_text` render them; the shell applies them in batches.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter

from ztna.tunnelcmds import Log

TABLE = "ztna_pop_rules"


class DnsMap:
    def __init__(self, max_entries: int = 100_000, *, min_ttl: int = 5, max_ttl: int = 86_400):
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.by_addr: dict[str, dict[str, float]] = {}  # address -> {name: expiry}
        self.count = 0
        self._heap: list[tuple[float, str, str]] = []
        self._full = False
        self.counters: Counter = Counter()
        self.dirty: set[str] = set()  # addresses whose sets the shell has still to update

    def __len__(self) -> int:
        return self.count

    def answered(self, names, addrs, now: float, matches) -> list:
        """An answer for ``names`` (the question and its CNAME chain) with ``addrs`` [(address, ttl)]."""
        kept = [n for n in dict.fromkeys(names) if matches(n)]
        if not kept or not addrs:
            return []
        self.counters["answers_matched"] += 1
        cmds: list = []
        for addr, ttl in addrs:
            expiry = now + min(max(int(ttl), self.min_ttl), self.max_ttl)
            for name in kept:
                self._put(addr, name, expiry, now, cmds)
        return cmds

    def _put(self, addr: str, name: str, expiry: float, now: float, cmds: list) -> None:
        names = self.by_addr.get(addr)
        old = names.get(name) if names is not None else None
        if old is not None:
            if expiry > old:
                names[name] = expiry
                self._push(expiry, addr, name)
                self.dirty.add(addr)
                self.counters["entries_refreshed"] += 1
            return
        if self.count >= self.max_entries:
            self.expire(now)
            if self.count >= self.max_entries:
                self.counters["entries_refused"] += 1
                if not self._full:
                    self._full = True
                    cmds.append(Log(logging.WARNING, f"DNS map full: {self.max_entries} address/name entries (the cap); "
                                                     "new answers for matched names are not learnt until entries "
                                                     "expire (counted as entries_refused)"))
                return
        if names is None:
            names = self.by_addr[addr] = {}
        names[name] = expiry
        self.count += 1
        self._push(expiry, addr, name)
        self.dirty.add(addr)

    def _push(self, expiry: float, addr: str, name: str) -> None:
        heapq.heappush(self._heap, (expiry, addr, name))
        if len(self._heap) > 2 * self.count + 1024:  # refreshes leave stale heap items behind
            self._heap = [(e, a, n) for a, ns in self.by_addr.items() for n, e in ns.items()]
            heapq.heapify(self._heap)

    def names(self, addr: str, now: float) -> list[str]:
        """The live names the PoP's DNS answered ``addr`` for (the rules' ``names_of`` hook)."""
        names = self.by_addr.get(addr)
        if not names:
            return []
        return [n for n, e in names.items() if e > now]

    def expiry(self, addr: str, name: str) -> float | None:
        names = self.by_addr.get(addr)
        return names.get(name) if names else None

    def expire(self, now: float) -> int:
        """Drop the entries dead at ``now``; how many went."""
        gone = 0
        heap = self._heap
        while heap and heap[0][0] <= now:
            e, addr, name = heapq.heappop(heap)
            names = self.by_addr.get(addr)
            if names is None or names.get(name) != e:
                continue  # refreshed since, or gone already
            del names[name]
            if not names:
                del self.by_addr[addr]
            self.count -= 1
            gone += 1
        if self._full and self.count < 0.9 * self.max_entries:
            self._full = False
        return gone

    def keep_only(self, matches) -> int:
        """After a rules reload: drop the entries whose names no rule covers any more; how many went."""
        gone = 0
        for addr in list(self.by_addr):
            names = self.by_addr[addr]
            for n in [n for n in names if not matches(n)]:
                del names[n]
                gone += 1
            if not names:
                del self.by_addr[addr]
        self.count -= gone
        self._heap = [(e, a, n) for a, ns in self.by_addr.items() for n, e in ns.items()]
        heapq.heapify(self._heap)
        self.dirty = set(self.by_addr)
        return gone


# ---- the answer's records (from the forwarder's reply bytes) --------------------------------
def records_of(msg: bytes) -> tuple[list[str], list[tuple[str, int]]]:
    """(the question's name and its CNAME chain, [(address, ttl)] of the A records owned by the chain).

    Records owned by names outside the chain are ignored: an answer cannot
    teach the map a name that was not asked for.  Garbage gives nothing."""
    from dnslib import QTYPE

    from ztna.dnswire import BadMessage, parse_untrusted

    try:
        rec = parse_untrusted(msg)
    except BadMessage:
        return [], []
    if not rec.questions:
        return [], []
    chain = [str(rec.q.qname).rstrip(".").lower()]
    for rr in rec.rr:
        if rr.rtype == QTYPE.CNAME and str(rr.rname).rstrip(".").lower() in chain:
            chain.append(str(rr.rdata).rstrip(".").lower())
    addrs = []
    for rr in rec.rr:
        if rr.rtype == QTYPE.A and str(rr.rname).rstrip(".").lower() in chain:
            addrs.append((str(rr.rdata), int(rr.ttl)))
    return chain, addrs


# ---- the nftables sets ----------------------------------------------------------------------
def set_name(rule) -> str:
    return f"{'fw' if rule.kind == 'firewall' else 'net'}{rule.index}"


def _comment(text: str) -> str:
    clean = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in text)
    return clean.encode("utf-8")[:120].decode("utf-8", "ignore")


def table_text(rules, size: int) -> str | None:
    """Table ``ip ztna_pop_rules``: one timeout set per rule with a domain destination; None if no rule has one."""
    wanted = rules.domain_rules() if rules is not None else []
    if not wanted:
        return None
    out = [f"table ip {TABLE} {{"]
    for r in wanted:
        out.append(f"  set {set_name(r)} {{\n    type ipv4_addr\n    flags timeout\n    size {size}\n"
                   f"    comment \"{_comment(r.kind + ' rule ' + r.name)}\"\n  }}")
    out.append("}")
    return "\n".join(out) + "\n"


def elements_text(dmap: DnsMap, addrs, rules, now: float, *, chunk: int = 5000) -> str:
    """``add element`` lines putting each of ``addrs`` in its rules' sets with its longest live timeout.

    One line per set and ``chunk`` elements (nft reads 100,000 elements in
    about 0.4 s so).  Adding an element that is there already sets its
    timeout anew (seen on Linux 6.18 with nft 1.0.6), so a refresh is the
    same line."""
    per_set: dict[str, list[str]] = {}
    sets_of: dict[str, list[str]] = {}  # name -> its rules' sets, once per call
    for addr in addrs:
        best: dict[str, float] = {}
        for name, e in (dmap.by_addr.get(addr) or {}).items():
            if e <= now:
                continue
            sets = sets_of.get(name)
            if sets is None:
                sets = sets_of[name] = [set_name(r) for r in rules.rules_for_name(name)]
            for s in sets:
                if e > best.get(s, 0.0):
                    best[s] = e
        for s, e in best.items():
            per_set.setdefault(s, []).append(f"{addr} timeout {max(1, int(e - now + 0.999))}s")
    lines = []
    for s, els in per_set.items():
        for i in range(0, len(els), chunk):
            lines.append(f"add element ip {TABLE} {s} {{ {', '.join(els[i:i + chunk])} }}")
    return "\n".join(lines) + ("\n" if lines else "")
