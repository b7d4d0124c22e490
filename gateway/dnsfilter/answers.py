"""SPEC.md §4 as data: what a blocked name gets, by record type and by why it is bad.

Theory of operation: a name the policy judges bad carries one *column*
(why it is bad).  The query's type falls in one *row*.  The table says whether
that (row, column) cell is blocked; a blocked cell is answered with the row's
action (the block-page address for A/AAAA, REFUSED otherwise), an unblocked
cell gets the real answer from upstream.

| row           | tunnel | list | security | ddns | content | blocked answer |
|---------------|--------|------|----------|------|---------|----------------|
| address       | yes    | yes  | yes      | yes  | yes     | block page     |
| sensitive     | yes    | yes  | yes      | no   | no      | REFUSED        |
| other         | yes    | no   | no       | no   | no      | REFUSED        |
"""

from __future__ import annotations

import enum

from dnslib import QTYPE


class Column(str, enum.Enum):
    """Why a name is bad, as the table's columns (strictest first)."""

    TUNNEL = "dns-tunneling-vpn"
    LIST = "destination-list"
    SECURITY = "security"
    DDNS = "dynamic-dns"
    CONTENT = "content"


class Row(str, enum.Enum):
    """Which group of record types a query falls in."""

    ADDRESS = "address"
    SENSITIVE = "sensitive"
    OTHER = "other"


class Action(str, enum.Enum):
    """What the resolver does with one query."""

    PASS = "pass"            # forward / answer for real
    BLOCKPAGE = "blockpage"  # NOERROR with the block-page address
    REFUSED = "refused"      # RCODE REFUSED


# Strictness order: when a name is bad for several reasons, the strictest wins.
STRICTNESS = [Column.TUNNEL, Column.LIST, Column.SECURITY, Column.DDNS, Column.CONTENT]

BLOCKED: dict[Row, frozenset[Column]] = {
    Row.ADDRESS: frozenset(Column),
    Row.SENSITIVE: frozenset({Column.TUNNEL, Column.LIST, Column.SECURITY}),
    Row.OTHER: frozenset({Column.TUNNEL}),
}

ROW_ACTION = {Row.ADDRESS: Action.BLOCKPAGE, Row.SENSITIVE: Action.REFUSED, Row.OTHER: Action.REFUSED}

ADDRESS_TYPES = frozenset({QTYPE.A, QTYPE.AAAA})

# Row 2: the types the seed names, plus obsolete and experimental types
# (IANA "DNS Resource Record TYPEs": obsolete, experimental, or never
# standardised).  Everything not listed in either set (MX, NS, SOA, CAA,
# HTTPS, SVCB, DS, DNSKEY, NAPTR, TLSA, unknown numbers...) is row 3.
SENSITIVE_TYPES = frozenset({
    QTYPE.ANY, QTYPE.CNAME, QTYPE.PTR, QTYPE.RRSIG, QTYPE.SPF, QTYPE.SRV, QTYPE.TXT,
    3,    # MD, obsolete (RFC 973)
    4,    # MF, obsolete (RFC 973)
    7,    # MB, experimental
    8,    # MG, experimental
    9,    # MR, experimental
    10,   # NULL, experimental
    11,   # WKS, deprecated (RFC 1123)
    14,   # MINFO, experimental
    19,   # X25, experimental (RFC 1183)
    20,   # ISDN, experimental
    21,   # RT, experimental
    22,   # NSAP, historic
    23,   # NSAP-PTR, historic
    27,   # GPOS, experimental
    30,   # NXT, obsolete (RFC 3755)
    31,   # EID, never standardised
    32,   # NIMLOC, never standardised
    34,   # ATMA, never standardised
    38,   # A6, historic (RFC 6563)
    40,   # SINK, never standardised
    56,   # NINFO, never standardised
    57,   # RKEY, never standardised
    100,  # UINFO, IANA-reserved
    101,  # UID, IANA-reserved
    102,  # GID, IANA-reserved
    103,  # UNSPEC, IANA-reserved
    253,  # MAILB, obsolete
    254,  # MAILA, obsolete
})


def row_of(qtype: int) -> Row:
    """The table row a query type falls in."""
    if qtype in ADDRESS_TYPES:
        return Row.ADDRESS
    if qtype in SENSITIVE_TYPES:
        return Row.SENSITIVE
    return Row.OTHER


def action(qtype: int, column: Column | None) -> Action:
    """The action for a query of ``qtype`` for a name bad for ``column`` (None: not bad)."""
    if column is None:
        return Action.PASS
    row = row_of(qtype)
    return ROW_ACTION[row] if column in BLOCKED[row] else Action.PASS


def strictest(columns) -> Column | None:
    """The column that blocks the most among ``columns`` (None if empty)."""
    present = set(columns)
    for c in STRICTNESS:
        if c in present:
            return c
    return None
