"""What the agent's DNS stub does with one query.

A private application's name (exact or ``*.domain``) gets a leased address
(A, or ANY), or an empty NOERROR for any other type (AAAA included: the tunnel
carries IPv4).  Every other name is forwarded to the resolvers the machine had.
Pure: the pool and the time come in, a decision goes out.
"""

from __future__ import annotations

from dataclasses import dataclass

from dnslib import CLASS, OPCODE, QTYPE, RCODE, RR, A, DNSHeader, DNSRecord

from ztna.names import BadName, PatternSet, normalize

from .leases import Lease, LeasePool, PoolExhausted


@dataclass
class Decision:
    """``reply`` to send now, or ``forward`` the query upstream; ``lease`` when one was given."""

    reply: DNSRecord | None = None
    forward: bool = False
    lease: Lease | None = None
    why: str = ""
    malformed: bool = False  # the query itself was bad (FORMERR)


def _header_only(query: DNSRecord, rcode: int) -> DNSRecord:
    # Header only: dnslib reads names it cannot write back (over 255 octets), so echoing the
    # question would raise while packing the refusal (issue 19).  RFC 1035 allows an empty question.
    return DNSRecord(DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode, rd=query.header.rd,
                               rcode=rcode))


def _formerr(query: DNSRecord, why: str) -> Decision:
    return Decision(_header_only(query, RCODE.FORMERR), why=why, malformed=True)


def decide(query: DNSRecord, apps: PatternSet, pool: LeasePool, now: float, *, ttl: int = 10) -> Decision:
    if query.header.qr:
        return Decision(why="a response, not a query: ignored")
    if query.header.opcode != OPCODE.QUERY:
        return Decision(_header_only(query, RCODE.NOTIMP), why=f"opcode {query.header.opcode} not implemented")
    if len(query.questions) != 1:
        return _formerr(query, f"{len(query.questions)} questions; exactly one is allowed")
    q = query.q
    try:
        name = normalize(str(q.qname))
    except BadName as exc:
        return _formerr(query, str(exc))
    hit = apps.match(name) if q.qclass == CLASS.IN else None
    if hit is None:
        return Decision(forward=True, why="not a private application")
    r = query.reply(ra=1, aa=1)
    if q.qtype not in (QTYPE.A, QTYPE.ANY):
        return Decision(r, why=f"private application, {QTYPE.get(q.qtype)}: no data")
    try:
        lease = pool.lease(name, now, group=hit if hit.startswith("*.") else None)
    except PoolExhausted as exc:
        r.header.rcode = RCODE.SERVFAIL
        r.header.aa = 0
        return Decision(r, why=str(exc))
    r.add_answer(RR(q.qname, QTYPE.A, CLASS.IN, ttl, A(lease.addr_text)))
    return Decision(r, lease=lease, why=f"private application: leased {lease.addr_text}")
