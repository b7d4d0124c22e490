"""The EDNS0 option that carries a device identity from a roaming client to
the DNS security resolver, so a device can be told apart from the network it
sits on.  Option code 65001 is in the local/experimental range (RFC 6891 §9).
"""

from __future__ import annotations

from dnslib import EDNS0, EDNSOption, DNSRecord

DEVICE_ID_OPTION = 65001
MAX_DEVICE_ID = 64


class BadDeviceId(ValueError):
    """A device identity that is empty, too long or not printable ASCII."""


def _check(device_id: str) -> bytes:
    raw = device_id.encode("ascii", errors="strict") if device_id.isascii() else b""
    if not raw or len(raw) > MAX_DEVICE_ID or not device_id.isprintable():
        raise BadDeviceId(f"device id must be 1..{MAX_DEVICE_ID} printable ASCII characters, got {device_id!r}")
    return raw


def add_device_id(query: DNSRecord, device_id: str, *, udp_len: int = 1232) -> DNSRecord:
    """Attach the device identity to ``query`` (adding an OPT record if it has none)."""
    raw = _check(device_id)
    opt = next((rr for rr in query.ar if rr.rtype == 41), None)
    if opt is None:
        query.add_ar(EDNS0(udp_len=udp_len, opts=[EDNSOption(DEVICE_ID_OPTION, raw)]))
    else:
        opt.rdata = [o for o in opt.rdata if o.code != DEVICE_ID_OPTION] + [EDNSOption(DEVICE_ID_OPTION, raw)]
    return query


def device_id_of(query: DNSRecord) -> str | None:
    """The device identity carried by ``query``, or None (also when malformed)."""
    for rr in query.ar:
        if rr.rtype == 41:
            for o in rr.rdata:
                if getattr(o, "code", None) == DEVICE_ID_OPTION:
                    try:
                        text = bytes(o.data).decode("ascii")
                        _check(text)
                    except (UnicodeDecodeError, BadDeviceId):
                        return None
                    return text
    return None
