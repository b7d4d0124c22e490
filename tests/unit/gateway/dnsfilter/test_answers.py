"""SPEC.md §4, typed in again here on purpose: if the resolver's table were wrong, this one would differ."""

import pytest
from dnslib import QTYPE

from gateway.dnsfilter.answers import Action, Column, action, row_of

COLUMNS = ["tunnel", "list", "security", "ddns", "content"]
COL = {"tunnel": Column.TUNNEL, "list": Column.LIST, "security": Column.SECURITY, "ddns": Column.DDNS,
       "content": Column.CONTENT}
BP, REF, PASS = Action.BLOCKPAGE, Action.REFUSED, Action.PASS
# SPEC.md §4, row by row, column by column.
EXPECTED = {
    "A": [BP, BP, BP, BP, BP],
    "AAAA": [BP, BP, BP, BP, BP],
    "ANY": [REF, REF, REF, PASS, PASS],
    "CNAME": [REF, REF, REF, PASS, PASS],
    "PTR": [REF, REF, REF, PASS, PASS],
    "RRSIG": [REF, REF, REF, PASS, PASS],
    "SPF": [REF, REF, REF, PASS, PASS],
    "SRV": [REF, REF, REF, PASS, PASS],
    "TXT": [REF, REF, REF, PASS, PASS],
    "NULL": [REF, REF, REF, PASS, PASS],     # experimental
    "TYPE3": [REF, REF, REF, PASS, PASS],    # MD, obsolete
    "A6": [REF, REF, REF, PASS, PASS],       # historic
    "MX": [REF, PASS, PASS, PASS, PASS],
    "NS": [REF, PASS, PASS, PASS, PASS],
    "SOA": [REF, PASS, PASS, PASS, PASS],
    "CAA": [REF, PASS, PASS, PASS, PASS],
    "HTTPS": [REF, PASS, PASS, PASS, PASS],
    "SVCB": [REF, PASS, PASS, PASS, PASS],
    "DS": [REF, PASS, PASS, PASS, PASS],
    "NAPTR": [REF, PASS, PASS, PASS, PASS],
    "TLSA": [REF, PASS, PASS, PASS, PASS],
}


@pytest.mark.parametrize("qtype", sorted(EXPECTED))
@pytest.mark.parametrize("col", COLUMNS)
def test_every_cell_of_the_table(qtype, col):
    number = int(qtype[4:]) if qtype.startswith("TYPE") else getattr(QTYPE, qtype)
    assert action(number, COL[col]) is EXPECTED[qtype][COLUMNS.index(col)]


@pytest.mark.parametrize("qtype", [1, 28, 16, 15, 65, 65280, 0xFFFF])
def test_allowed_names_always_pass(qtype):
    assert action(qtype, None) is Action.PASS


def test_unknown_type_numbers_are_the_other_row():
    for t in (53, 65280, 65534, 0xFFFF):
        assert row_of(t).value == "other"
        assert action(t, Column.TUNNEL) is Action.REFUSED
        assert action(t, Column.SECURITY) is Action.PASS
