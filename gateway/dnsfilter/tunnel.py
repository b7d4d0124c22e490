"""DNS tunnelling detector: names in no list whose query pattern looks like a tunnel.

Theory of operation: queries are grouped by *parent* (the last
``parent_labels`` labels, e.g. ``bad.example``).  Within a sliding window each
parent collects three signals:

- *long random names*: distinct names whose part below the parent holds at
  least ``long_name`` characters (dots not counted) with a Shannon entropy of
  at least ``entropy`` bits a character.  Tunnels pack as much payload into
  each name as they can; the hashes and GUIDs of CDN and ad names are shorter
  (a 32-digit hex label is 32, a GUID 36);
- *burst*: at least ``unique_names`` distinct names under the parent;
- *TXT/NULL heavy*: at least ``txt_share`` of at least ``min_queries`` queries
  ask TXT or NULL (the types that carry a tunnel's downstream).

A parent with ``strong_random`` long random labels, or with two of the three
signals, is classified ``dns-tunneling-vpn`` for ``hold`` seconds.  A burst
alone never classifies: a busy resolver sees many distinct CDN names.

Who the verdict is for: the signals are counted per *client and parent*, and
a verdict first holds for that client only.  One source must not be able to
have a whole domain blocked for everybody (a few long random names under
``good.example`` would otherwise cost every other user ``www.good.example``).
A parent is classified for every client only once ``domain_sources`` distinct
clients have each been classified under it within ``hold`` seconds, and never
while it is *popular*: ``popular_sources`` distinct clients asked under it in
the current window (a tunnel has few users; a real site has many).  The allow
lists always win over this verdict (``policy.PolicySet.decide``).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

from .names import parent_of

T_TXT, T_NULL = 16, 10


@dataclass
class TunnelConfig:
    """Thresholds; see the module docstring for what each one means."""

    enabled: bool = True
    window: float = 60.0
    parent_labels: int = 2
    long_name: int = 50
    entropy: float = 3.5
    random_names: int = 5
    strong_random: int = 20
    unique_names: int = 40
    txt_share: float = 0.5
    min_queries: int = 20
    hold: float = 600.0
    domain_sources: int = 3
    popular_sources: int = 20
    max_parents: int = 50_000


def entropy(text: str) -> float:
    """Shannon entropy of ``text`` in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def looks_random(name: str, parent: str, cfg: TunnelConfig) -> bool:
    """True when the part of ``name`` below ``parent`` is long and high-entropy."""
    below = name[: len(name) - len(parent) - 1].replace(".", "")
    return len(below) >= cfg.long_name and entropy(below) >= cfg.entropy


@dataclass
class _Window:
    start: float
    names: set[str] = field(default_factory=set)
    random: int = 0
    queries: int = 0
    txt: int = 0


EVERYONE = None  # the client part of a domain-wide verdict's key


class TunnelDetector:
    """Watches every query; ``observe`` says whether the name's parent is classified for its client now.

    Keys are ``(client, parent)``: windows in ``_w``, verdicts in ``_until``
    (``(EVERYONE, parent)`` for a domain-wide one).
    """

    def __init__(self, cfg: TunnelConfig | None = None):
        self.cfg = cfg or TunnelConfig()
        self._w: dict[tuple, _Window] = {}
        self._until: dict[tuple, float] = {}
        # time, parent, why, and who the verdict is for (a client, or EVERYONE); newest last
        self.detections: deque[tuple[float, str, str, str | None]] = deque(maxlen=1000)
        self.detected = 0  # how many detections ever
        self._parents: dict[str, str] = {}
        self._flagged: dict[str, dict[str, float]] = {}  # parent -> client -> until, per-client verdicts
        self._askers: dict[str, tuple[float, set]] = {}  # parent -> (window start, clients that asked)

    def parent(self, name: str) -> str:
        """The unit ``name`` is counted under (memoised: the same names come back all the time)."""
        p = self._parents.get(name)
        if p is None:
            if len(self._parents) >= 100_000:
                self._parents.clear()
            p = self._parents[name] = parent_of(name, self.cfg.parent_labels)
        return p

    def _held(self, key: tuple, now: float) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= now:
            del self._until[key]
            return False
        return True

    def classified(self, name: str, now: float, client: str | None = None) -> str | None:
        """The parent covering ``name`` when it is classified for ``client`` (or for everyone), else None."""
        if not self._until:
            return None
        parent = self.parent(name)
        if self._held((EVERYONE, parent), now) or (client is not None and self._held((client, parent), now)):
            return parent
        return None

    def observe(self, name: str, qtype: int, now: float, parent: str | None = None, client: str = "") -> str | None:
        """Count one query for ``name`` from ``client``; the parent classified for it (now or earlier), or None.

        ``parent``: ``self.parent(name)``, when the caller kept it (the engine's memo does).
        """
        cfg = self.cfg
        if not cfg.enabled or "." not in name:
            return None
        if parent is None:
            parent = self._parents.get(name) or self.parent(name)
        key = (client, parent)
        if self._until and (self._held((EVERYONE, parent), now) or self._held(key, now)):
            return parent
        if parent == name:
            return None
        w = self._w.get(key)
        if w is None or now - w.start > cfg.window:
            if w is None and len(self._w) >= cfg.max_parents:
                self._expire(now)
            self._asked(parent, client, now)  # every new window of a client counts, or popularity lapses after one
            w = self._w[key] = _Window(now)
        w.queries += 1
        if qtype in (T_TXT, T_NULL):
            w.txt += 1
        if name not in w.names and len(w.names) < 4 * cfg.unique_names:
            w.names.add(name)
            if looks_random(name, parent, cfg):
                w.random += 1
        r = w.random
        if r < cfg.strong_random and (r >= cfg.random_names) + (len(w.names) >= cfg.unique_names) + (
                w.queries >= cfg.min_queries and w.txt / w.queries >= cfg.txt_share) < 2:
            return None  # fewer than two signals: the common case, decided without a call (see _judge)
        return self.conclude(key, w, now)

    def _asked(self, parent: str, client: str, now: float) -> None:
        """Note that ``client`` asks under ``parent`` (once a window each: how popular it is)."""
        got = self._askers.get(parent)
        if got is None or now - got[0] > self.cfg.window:
            if got is None and len(self._askers) >= self.cfg.max_parents:
                self._askers.clear()
            got = self._askers[parent] = (now, set())
        if len(got[1]) < self.cfg.popular_sources:
            got[1].add(client)

    def popular(self, parent: str, now: float) -> bool:
        """At least ``popular_sources`` clients asked under ``parent`` in the current window."""
        got = self._askers.get(parent)
        return got is not None and now - got[0] <= self.cfg.window and len(got[1]) >= self.cfg.popular_sources

    def conclude(self, key: tuple, w: _Window, now: float) -> str | None:
        """``key``'s window may show a tunnel: classify its parent for its client (returns the parent) or not (None).

        The resolver's batch loop counts a repeated name itself and calls this
        when the counts reach two signals, as ``observe`` does.
        """
        why = self._judge(w)
        if why is None:
            return None
        client, parent = key
        hold = self.cfg.hold
        self._until[key] = now + hold
        self.detections.append((now, parent, why, client))
        self.detected += 1
        del self._w[key]
        flagged = self._flagged.get(parent)
        if flagged is None:
            if len(self._flagged) >= self.cfg.max_parents:
                self._flagged.clear()
            flagged = self._flagged[parent] = {}
        for c in [c for c, until in flagged.items() if until <= now]:
            del flagged[c]
        flagged[client] = now + hold
        if (len(flagged) >= self.cfg.domain_sources and not self.popular(parent, now)
                and not self._held((EVERYONE, parent), now)):
            self._until[(EVERYONE, parent)] = now + hold
            self.detections.append((now, parent, f"{len(flagged)} clients classified within {hold:.0f} s", EVERYONE))
            self.detected += 1
        return parent

    def _judge(self, w: _Window) -> str | None:
        cfg = self.cfg
        if w.random >= cfg.strong_random:
            return f"{w.random} long random names"
        # Count first, word later: this runs on every query, and a busy parent
        # (one signal, the burst) must not pay for the text.
        if (w.random >= cfg.random_names) + (len(w.names) >= cfg.unique_names) + (
                w.queries >= cfg.min_queries and w.txt / w.queries >= cfg.txt_share) < 2:
            return None
        signals = []
        if w.random >= cfg.random_names:
            signals.append(f"{w.random} long random names")
        if len(w.names) >= cfg.unique_names:
            signals.append(f"{len(w.names)} distinct names")
        if w.queries >= cfg.min_queries and w.txt / w.queries >= cfg.txt_share:
            signals.append(f"{w.txt}/{w.queries} queries TXT or NULL")
        return " and ".join(signals) if len(signals) >= 2 else None

    def _expire(self, now: float) -> None:
        for k in [k for k, w in self._w.items() if now - w.start > self.cfg.window]:
            del self._w[k]
        if len(self._w) >= self.cfg.max_parents:
            self._w.clear()
