"""What the agent's DNS stub does with one query.

A private application's name (exact or ``*.domain``) gets a leased address
(A, or ANY), or an empty NOERROR for any other type (AAAA included: the tunnel
carries IPv4).  Every other name is forwarded to the resolvers the machine had.
Pure: the pool and the time come in, a decision goes out.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import CLASS, OPCODE, QTYPE, RCODE, RR, A, DNSRecord

from ztna.names import BadName, PatternSet, normalize

from .leases import Lease, LeasePool, PoolExhausted


@dataclass
class Decision:
    """``reply`` to send now, or ``forward`` the query upstream; ``lease`` when one was given."""

    reply: DNSRecord | None = None
    forward: bool = False
    lease: Lease | None = None
    why: str = ""


def decide(query: DNSRecord, apps: PatternSet, pool: LeasePool, now: float, *, ttl: int = 10) -> Decision:
    if query.header.qr:
        return Decision(why="a response, not a query: ignored")
    if query.header.opcode != OPCODE.QUERY:
        r = query.reply()
        r.header.rcode = RCODE.NOTIMP
        return Decision(r, why=f"opcode {query.header.opcode} not implemented")
    if len(query.questions) != 1:
        r = query.reply()
        r.header.rcode = RCODE.FORMERR
        return Decision(r, why=f"{len(query.questions)} questions; exactly one is allowed")
    q = query.q
    try:
        name = normalize(str(q.qname))
    except BadName as exc:
        r = query.reply()
        r.header.rcode = RCODE.FORMERR
        return Decision(r, why=str(exc))
    if q.qclass != CLASS.IN or name not in apps:
        return Decision(forward=True, why="not a private application")
    r = query.reply(ra=1, aa=1)
    if q.qtype not in (QTYPE.A, QTYPE.ANY):
        return Decision(r, why=f"private application, {QTYPE.get(q.qtype)}: no data")
    try:
        lease = pool.lease(name, now)
    except PoolExhausted as exc:
        r.header.rcode = RCODE.SERVFAIL
        r.header.aa = 0
        return Decision(r, why=str(exc))
    r.add_answer(RR(q.qname, QTYPE.A, CLASS.IN, ttl, A(lease.addr_text)))
    return Decision(r, lease=lease, why=f"private application: leased {lease.addr_text}")
