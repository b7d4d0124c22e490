"""The resolver's core: bytes and a source address in, a decision out.

Sans-IO: ``handle()`` returns a :class:`Reply` (send these bytes), a
:class:`Drop` (send nothing) or a :class:`Forward` (ask an upstream, then call
``complete()`` with what came back).  Time is an argument; the shell
(``server.py``) does the sockets, the forwarding and the log writing.

Order for one query (docs/dns-security.md, "Precedence"):
rate limit -> parse -> served network / policy -> tunnelling detector ->
verdict (allow list, block lists, categories) -> SPEC §4 action -> cache or
upstream -> CNAME inspection of the answer chain -> truncation to the client's buffer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass

from dnslib import QTYPE

from . import wire
from .answers import STRICTNESS, Action, action
from .cache import AnswerCache
from .config import Config
from .policy import Policy, Verdict
from .ratelimit import RateLimiter
from .tunnel import EVERYONE, T_NULL, T_TXT, TunnelDetector
from .wire import BadMessage, Query, Upstream

log = logging.getLogger("ztna.dns")

ZONE_TRANSFER = (251, 252)
_UNSET = object()


@dataclass(slots=True)
class Reply:
    """Send ``data`` to the client; write ``log`` (if any) to the query log."""

    data: bytes
    log: dict | None
    query: Query | None = None
    up: Upstream | None = None      # set when ``data`` is a cached upstream answer (TTLs age from ``stored``)
    stored: float = 0.0
    line: str | None = None         # instead of ``log``: the JSON line so far, the shell appends latency_ms
    own: bool = False               # holds for this client only (a tunnelling verdict on its queries): never memoised


@dataclass(slots=True)
class Drop:
    """Send nothing; write ``log`` (if any)."""

    log: dict | None


@dataclass(slots=True)
class Forward:
    """Ask an upstream ``question`` (cache key ``key``), then call ``Engine.complete``."""

    query: Query
    policy: Policy
    verdict: Verdict
    key: tuple[str, int, int]
    question: bytes
    log: dict
    tcp: bool
    memo_key: tuple | None = None


@dataclass(slots=True)
class Batch:
    """What ``Engine.handle_batch`` decided for datagrams that arrived together.

    Memo hits: ``answers[k]`` goes to datagram ``which[k]`` and ``lines[k]``
    is its log line without ``latency_ms`` and the closing brace (the shell
    appends them).  Everything else: ``slow`` holds (datagram index, Reply,
    Drop or Forward), to be handled as ``handle()``'s result would be.
    """

    which: list[int]
    answers: list[bytes]
    lines: list[str]
    slow: list[tuple[int, "Reply | Drop | Forward"]]


@dataclass(slots=True)
class _Memo:
    """A finished answer to one exact query (all but the ID) under one network policy.

    Why: clients repeat the very same bytes; replaying the answer skips
    parsing, policy, packing and JSON encoding.  A block, refusal or
    not-served answer stays valid while the policy does; an upstream answer
    while its cache entry would, with TTLs counted down on every hit.  The
    tunnelling detector and the rate limit still see every query.
    """

    body: bytes            # the answer without its ID (blocked/refused), or b"" for an upstream answer
    q: Query
    up: Upstream | None
    stored: float
    expires: float
    block: dict | None     # what the block page should say, refreshed on every hit
    ident: str | None      # JSON of the identity when it is a device (else the client's address)
    rest: str              # the log line's other fields, JSON, starting with ","
    age: int = -1          # the age (whole seconds) ``aged`` was built for
    aged: bytes = b""      # an upstream answer without its ID, TTLs counted down by ``age``
    ager: wire.AgedAnswer | None = None
    parent: str | None = None  # the tunnelling detector's unit for this name, None when it watches nothing
    counts: bool = False       # the detector counts this name in its parent's window (it is not the parent)
    txt: bool = False          # a TXT/NULL query (the detector counts those)
    block_key: tuple | None = None  # (client, name) of the last ``recent_blocks`` entry this hit refreshed
    count_key: tuple = ()  # metrics.key_of(its log record): what each hit adds to Engine.counts


MEMO_FIXED_SECONDS = 60.0
MEMO_SIZE = 100_000


def type_name(qtype: int) -> str:
    name = QTYPE.get(qtype)
    return name if not name.isdigit() else f"TYPE{qtype}"


class Engine:
    """One resolver's state: policies, cache, detector, rate limiter, recent blocks."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.policies = cfg.policies
        self.cache = AnswerCache(cfg.cache_size, cfg.max_ttl)
        self.detector = TunnelDetector(cfg.tunnel)
        self.limiter = RateLimiter(cfg.rate_qps, cfg.rate_burst or 2 * cfg.rate_qps)
        self._burst = cfg.rate_burst
        self.dropped_before = 0
        self._verdicts: dict[tuple[str, str, str | None], Verdict] = {}
        self._selected: dict[tuple[str, str | None], Policy | None] = {}
        self._drops_reported: dict[str, int] = {}
        # policy name -> query bytes without the ID -> finished answer (see _Memo)
        self._memo: dict[str, dict[bytes, _Memo]] = {p.name: {} for p in cfg.policies.policies}
        self._trust_memos()
        # (client, name) -> what the block page should say; bounded.
        self.recent_blocks: dict[tuple[str, str], dict] = {}
        # metrics.key_of(log record) -> queries; memo hits counted here, the rest by the shell (metrics.count)
        self.counts: dict[tuple, int] = {}

    def apply(self, cfg: Config) -> None:
        """Put a reloaded configuration in force (``reload.plan`` said it may be applied live).

        Verdicts, policy choices and finished answers were made under the old
        policies, so they go; the answer cache holds upstream answers, which
        no policy changed, and stays.  A query already forwarded finishes under
        the policy it was decided with."""
        self.cfg = cfg
        self.policies = cfg.policies
        self._verdicts = {}
        self._selected = {}
        self._memo = {p.name: {} for p in cfg.policies.policies}
        self._trust_memos()
        if (cfg.rate_qps, cfg.rate_burst) != (self.limiter.qps, self._burst):
            self.dropped_before += self.limiter.total_dropped  # the metric counts on across the new limiter
            self.limiter = RateLimiter(cfg.rate_qps, cfg.rate_burst or 2 * cfg.rate_qps)
            self._burst = cfg.rate_burst
            self._drops_reported = {}

    def _trust_memos(self) -> None:
        """With ``device_id_networks`` set, answers to sources whose device ids are ignored live in memos
        of their own: the same query bytes (device option included) mean another policy there."""
        self._trusted: dict[str, bool] = {}
        self._memo_untrusted: dict[str, dict[bytes, _Memo]] = {p.name: {} for p in self.cfg.policies.policies}

    def device_trusted(self, source: str) -> bool:
        """Whether a device id from ``source`` may choose the policy (``server.device_id_networks``)."""
        nets = self.cfg.device_id_networks
        if nets is None:
            return True
        hit = self._trusted.get(source)
        if hit is None:
            if len(self._trusted) > 65_536:
                self._trusted.clear()
            try:
                a = ipaddress.ip_address(source)
                if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
                    a = a.ipv4_mapped
                hit = any(a.version == n.version and a in n for n in nets)
            except ValueError:
                hit = False
            self._trusted[source] = hit
        return hit

    def _memo_of(self, policy: Policy, source: str) -> dict:
        return self._memo[policy.name] if self.device_trusted(source) else self._memo_untrusted[policy.name]

    # ---- helpers ----------------------------------------------------------
    def _select(self, source: str, device: str | None) -> Policy | None:
        key = (source, device)
        try:
            return self._selected[key]
        except KeyError:
            if len(self._selected) > 65_536:
                self._selected.clear()
            p = self._selected[key] = self.policies.select(source, device)
            return p

    def _remember_block(self, source: str, name: str, info: dict) -> None:
        if len(self.recent_blocks) > 10_000:
            self.recent_blocks.clear()
        self.recent_blocks[(source, name)] = info

    def verdict(self, policy: Policy, name: str, tunnel_parent: str | None) -> Verdict:
        key = (policy.name, name, tunnel_parent)
        v = self._verdicts.get(key)
        if v is None:
            if len(self._verdicts) > 200_000:
                self._verdicts.clear()
            v = self._verdicts[key] = self.policies.decide(policy, name, tunnel_parent=tunnel_parent)
        return v

    @staticmethod
    def _log(now: float, source: str, q: Query | None, decision: str, **extra) -> dict:
        rec = {"time": round(now, 3), "client": source}
        if q is not None:
            rec.update(identity=q.device or source, name=q.qname, type=type_name(q.qtype))
            if q.device:
                rec["device"] = q.device
            elif q.bad_device:
                rec["note"] = "malformed device-id option ignored"
            elif q.ignored_device:
                # not naming the source: a memo hit replays this note for other sources
                rec["note"] = f"device id {q.ignored_device!r} ignored: source not in server.device_id_networks"
        else:
            rec["identity"] = source
        rec["decision"] = decision
        rec.update(extra)
        return rec

    def drop_reports(self, now: float) -> list[dict]:
        """One log record per source dropped by the rate limit since the last call, with how many."""
        out = []
        for source, total in self.limiter.dropped.items():
            new = total - self._drops_reported.get(source, 0)
            if new > 0:
                self._drops_reported[source] = total
                out.append(self._log(now, source, None, "rate-limited", rcode="DROP", dropped=new, dropped_total=total))
        return out

    # ---- the query path -----------------------------------------------------
    def handle(self, data: bytes, source: str, now: float, *, tcp: bool = False) -> Reply | Drop | Forward:
        """Decide what to do with one message from ``source``."""
        if tcp:
            return self._decide(data, source, now, True, None, _UNSET)
        b = self.handle_batch([bytes(data)], [source], now)
        if b.answers:  # a memo hit
            return Reply(b.answers[0], None, None, None, 0.0, b.lines[0])
        if b.slow:
            return b.slow[0][1]
        return Drop(None)  # the query failed on a bug, logged by handle_batch

    def handle_batch(self, datas: list[bytes], sources: list[str], now: float) -> Batch:
        """Decide for datagrams that arrived together over UDP (one ``now`` for all).

        Why a batch: most queries repeat one that was answered a moment ago
        (the memo), and for those this loop is the whole of the resolver's
        work; a call, a result object and attribute look-ups per query would
        cost as much again.  What each hit does is exactly what the single
        path would do: the rate limit and the tunnelling detector see the
        query, the block page's record is refreshed, the log line is written.
        Everything else goes through ``_decide`` one by one (``Batch.slow``).
        """
        out = Batch([], [], [], [])
        which, answers, lines, slow = out.which, out.answers, out.lines, out.slow
        limiter = self.limiter if self.limiter.qps > 0 else None
        det = self.detector
        dcfg = det.cfg
        until, wins = det._until, det._w
        window, cap = dcfg.window, 4 * dcfg.unique_names
        strong, rnd, uniq, minq, share = (dcfg.strong_random, dcfg.random_names, dcfg.unique_names,
                                          dcfg.min_queries, dcfg.txt_share)
        recent = self.recent_blocks
        counts = self.counts
        stamp = f'{{"time":{now:.3f},"client":"'
        last = memo = head = head_ident = None  # the previous datagram's sender and what was found for it
        for i, data in enumerate(datas):
            source = sources[i]
            try:
                if limiter is not None and not limiter.allow(source, now):
                    slow.append((i, Drop(None)))  # reported in bulk by drop_reports(), not one line per packet
                    continue
                if source is not last:  # datagrams come in runs from one sender: look it up once a run
                    pol = self._select(source, None)
                    memo = None if pol is None else self._memo_of(pol, source)
                    # The log line's head only changes with the time and the client.
                    head = stamp + source + '","identity":'
                    head_ident = f'{head}"{source}"'
                    last = source
                if memo is None:  # not served: nothing worth remembering (the refusal names the source)
                    slow.append((i, self._decide(data, source, now, False, None, _UNSET)))
                    continue
                body = data[2:]
                m = memo.get(body)
                tunnel = _UNSET
                if m is not None and m.expires > now:
                    q = m.q
                    parent = m.parent
                    if parent is not None:
                        # TunnelDetector.observe inlined for the common case, a parent not classified
                        # whose window is open and already holds this name (or is full): only the
                        # counts move.  Anything else is observe's (tests check the two agree).
                        key = (source, parent)
                        w = wins.get(key) if m.counts and not (until and (key in until or (EVERYONE, parent) in until)) else None
                        if w is not None and now - w.start <= window and (q.qname in w.names or len(w.names) >= cap):
                            w.queries += 1
                            if m.txt:
                                w.txt += 1
                            r = w.random
                            if r >= strong or (r >= rnd) + (len(w.names) >= uniq) + (
                                    w.queries >= minq and w.txt / w.queries >= share) >= 2:
                                tunnel = det.conclude(key, w, now)
                            else:
                                tunnel = None
                        else:
                            tunnel = det.observe(q.qname, q.qtype, now, parent, source)
                        if tunnel is not None:
                            slow.append((i, self._decide_and_memoize(data, source, now, body, memo, tunnel)))
                            continue
                    if m.up is None:
                        answer = data[:2] + m.body
                    else:
                        # TTLs only change once a second: rebuild the aged answer then, not per query.
                        age = int(now - m.stored)
                        if age != m.age:
                            if m.ager is None:
                                m.ager = wire.AgedAnswer(q, m.up)
                            m.aged = m.ager.at(age)
                            m.age = age
                        answer = data[:2] + m.aged
                    if m.block is not None:
                        key = m.block_key
                        if key is None or key[0] != source:
                            key = m.block_key = (source, q.qname)
                        if len(recent) > 10_000:
                            recent.clear()
                        recent[key] = m.block
                    ck = m.count_key
                    counts[ck] = counts.get(ck, 0) + 1
                    # The three lists grow together, after everything that could fail.
                    lines.append(head + m.ident + m.rest if m.ident is not None else head_ident + m.rest)
                    answers.append(answer)
                    which.append(i)
                    continue
                slow.append((i, self._decide_and_memoize(data, source, now, body, memo, tunnel)))
            except Exception:  # a bug on one query must not cost the others their answers
                log.exception("query from %s failed", source)
        return out

    def _decide_and_memoize(self, data: bytes, source: str, now: float, body: bytes, memo: dict, tunnel):
        key = (memo, body)
        out = self._decide(data, source, now, False, key, tunnel)
        if type(out) is Reply and out.query is not None and not out.own:
            self._memoize(key, out, now)
        return out

    def _memoize(self, key: tuple, out: Reply, now: float) -> None:
        memo, body = key
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        q = out.query
        log = dict(out.log)
        source = log.pop("client")
        log.pop("time", None)
        ident = log.pop("identity")
        if log["decision"] == "allowed":
            if out.up is None:
                return  # truncated or otherwise special: decide again next time
            log["cached"] = True
            expires = out.stored + min(out.up.ttl, self.cache.max_ttl)
        else:
            expires = now + MEMO_FIXED_SECONDS
        rest = json.dumps(log, separators=(",", ":"))[1:-1]
        ck = (log["decision"], log.get("column"), log.get("rcode"), bool(log.get("cached")))
        watched = self.detector.cfg.enabled and "." in q.qname
        parent = self.detector.parent(q.qname) if watched else None
        memo[body] = _Memo(
            out.data[2:] if out.up is None else b"", q, out.up, out.stored, expires,
            self.recent_blocks.get((source, q.qname)) if log["decision"] == "blocked" else None,
            json.dumps(ident) if q.device else None, ("," + rest) if rest else "",
            parent=parent, counts=parent != q.qname, txt=q.qtype in (T_TXT, T_NULL), count_key=ck)

    def _decide(self, data: bytes, source: str, now: float, tcp: bool, memo_key, tunnel) -> Reply | Drop | Forward:
        try:
            q = wire.parse_query_untrusted(data)
        except BadMessage as exc:
            return self._bad(data, source, now, exc)
        if q.qclass != wire.CLASS_IN:
            return self._refuse(q, source, now, "bad-query", wire.REFUSED, note=f"class {q.qclass} not served")
        if q.qtype == wire.T_OPT:
            return self._refuse(q, source, now, "bad-query", wire.FORMERR, note="OPT as a question type")
        if q.device is not None and not self.device_trusted(source):
            # Anyone can put any device id in a query (docs/dns-security.md, "Device identity").
            q.ignored_device, q.device = q.device, None
        policy = self._select(source, q.device)
        if policy is None:
            return self._refuse(q, source, now, "not-served", wire.REFUSED,
                                ede=(wire.EDE_PROHIBITED, f"this resolver does not serve {source}"))
        if q.qtype in ZONE_TRANSFER:
            return self._refuse(q, source, now, "bad-query", wire.REFUSED, policy=policy.name, note="zone transfer")
        tunnel_parent = self.detector.observe(q.qname, q.qtype, now, client=source) if tunnel is _UNSET else tunnel
        v = self.verdict(policy, q.qname, tunnel_parent)
        act = action(q.qtype, v.column)
        if act is not Action.PASS:
            return self._block(q, source, now, v, act, tcp)
        key = (q.qname, q.qtype, q.qclass)
        e = self.cache.get(key, now)
        if e is not None:
            return self._answer(q, source, now, policy, v, e.reply, e.stored, tcp, cached=True)
        question = q.question[:-4].lower() + q.question[-4:]
        return Forward(q, policy, v, key, question,
                       self._log(now, source, q, "allowed", policy=policy.name), tcp, memo_key)

    def complete(self, fwd: Forward, up: Upstream | None, now: float) -> Reply:
        """The upstream's reply (None: every upstream failed) becomes the client's answer."""
        q = fwd.query
        if up is None:
            log = dict(fwd.log, decision="upstream-failed", rcode="SERVFAIL")
            return Reply(wire.refusal(q, wire.SERVFAIL, (wire.EDE_NETWORK_ERROR, "no upstream answered")), log)
        self.cache.put(fwd.key, up, now)
        out = self._answer(q, fwd.log["client"], now, fwd.policy, fwd.verdict, up, now, fwd.tcp, log=fwd.log)
        if fwd.memo_key is not None and up.ttl > 0 and not out.own:
            self._memoize(fwd.memo_key, out, now)
        return out

    # ---- answers --------------------------------------------------------------
    def _answer(self, q: Query, source: str, now: float, policy: Policy, v: Verdict, up: Upstream, stored: float,
                tcp: bool, *, cached: bool = False, log: dict | None = None) -> Reply:
        if up.cnames and not v.allowed_by:
            # The strictest blocked link of the chain decides, as if the name itself were bad.
            worst: tuple[Verdict, str] | None = None
            for owner, target in up.cnames:
                lv = self.verdict(policy, target, self.detector.classified(target, now, source))
                if lv.blocked and (worst is None or STRICTNESS.index(lv.column) < STRICTNESS.index(worst[0].column)):
                    worst = (lv, f"{owner} -> {target}")
            if worst is not None:
                act = action(q.qtype, worst[0].column)
                if act is not Action.PASS:
                    return self._block(q, source, now, worst[0], act, tcp, link=worst[1])
        data = wire.cached_answer(q, up, int(now - stored))
        served: Upstream | None = up
        if len(data) > q.limit(tcp):
            data = wire.truncated(q)
            served = None
        if log is None:
            log = self._log(now, source, q, "allowed", policy=policy.name)
        log["rcode"] = wire.RCODE_NAMES.get(up.rcode, str(up.rcode))
        if cached:
            log["cached"] = True
        if v.allowed_by:
            log["allowed_by"] = v.allowed_by
        return Reply(data, log, q, served, stored)

    def _block(self, q: Query, source: str, now: float, v: Verdict, act: Action, tcp: bool, *, link: str = "") -> Reply:
        why = f"{v.reason} ({v.matched})" + (f" via CNAME {link}" if link else "")
        ede = (wire.EDE_BLOCKED, f"{why}; policy {v.policy}") if q.edns else None
        if act is Action.BLOCKPAGE:
            v4, v6 = self.cfg.blockpage.addresses(v.reason, v.column)
            data = wire.address_answer(q, [v4 if q.qtype == wire.T_A else v6], self.cfg.block_ttl, ede)
            rcode = "NOERROR"
            self._remember_block(source, q.qname, {
                "name": q.qname, "reason": v.reason, "column": v.column.value, "matched": v.matched,
                "policy": v.policy, "link": link, "time": now})
        else:
            data = wire.refusal(q, wire.REFUSED, ede)
            rcode = "REFUSED"
        log = self._log(now, source, q, "blocked", policy=v.policy, category=v.reason, column=v.column.value,
                        matched=v.matched, action=act.value, rcode=rcode)
        if link:
            log["cname"] = link
        return Reply(data, log, q, own=v.detected)

    def _refuse(self, q: Query, source: str, now: float, decision: str, rcode: int, *, ede=None, policy: str = "",
                note: str = "") -> Reply:
        log = self._log(now, source, q, decision, rcode=wire.RCODE_NAMES[rcode])
        if policy:
            log["policy"] = policy
        if note:
            log["note"] = note
        return Reply(wire.refusal(q, rcode, ede), log, q)

    def _bad(self, data: bytes, source: str, now: float, exc: BadMessage) -> Reply | Drop:
        if exc.rcode is None:
            return Drop(self._log(now, source, None, "bad-query", rcode="DROP", note=str(exc)))
        ident, flags, question = wire.question_of_untrusted(data)
        out = wire.error_answer(ident, flags, question, exc.rcode, edns=exc.rcode == wire.BADVERS)
        return Reply(out, self._log(now, source, None, "bad-query", rcode=wire.RCODE_NAMES.get(exc.rcode, str(exc.rcode)),
                                    note=str(exc), size=len(data)))
