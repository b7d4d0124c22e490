"""The state record: what the machine's DNS was before takeover, and whether
it may be put back.

The record holds the original file's exact text (so restore is byte for byte),
the servers and search domains with the interface each was learned from, the
machine it was recorded on, and the fingerprint of the file we wrote in its
place.  :func:`restore_plan` decides, with no I/O, what a restore must do.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field

from ztna import resolvconf

FORMAT = 1


class StateError(ValueError):
    """A state file that cannot be used (corrupt, wrong format); the message says why."""


@dataclass(frozen=True)
class Learned:
    """One DNS server or search domain and the interface it came from ('' when unknown)."""

    value: str
    iface: str = ""


@dataclass
class StateRecord:
    """What takeover recorded; written before the resolv.conf is touched."""

    machine_id: str
    path: str  # the resolv.conf this record belongs to
    original_text: str
    servers: list[Learned] = field(default_factory=list)
    search: list[Learned] = field(default_factory=list)
    written_fingerprint: str | None = None  # None: we do not own the file (never wrote it, or backed off)
    listen: str = ""
    recorded_at: float = 0.0
    pid: int = 0
    backend: str = "resolvconf"  # "resolved": nothing was written; our link in systemd-resolved is to be reverted
    link: str = ""               # that link

    def to_json(self) -> str:
        doc = asdict(self)
        doc["format"] = FORMAT
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json_untrusted(cls, data: bytes | str) -> "StateRecord":
        """Read a state file; a corrupt one raises StateError (only that)."""
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise StateError(f"state file is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise StateError("state file is not a JSON object")
        if doc.get("format") != FORMAT:
            raise StateError(f"state file format {doc.get('format')!r} is not {FORMAT}")
        try:
            rec = cls(
                machine_id=_str(doc, "machine_id"),
                path=_str(doc, "path"),
                original_text=_str(doc, "original_text"),
                servers=[_learned(x, ip=True) for x in _list(doc, "servers")],
                search=[_learned(x, ip=False) for x in _list(doc, "search")],
                written_fingerprint=doc.get("written_fingerprint"),
                listen=_str(doc, "listen"),
                recorded_at=float(doc.get("recorded_at", 0.0)),
                pid=int(doc.get("pid", 0)),
                backend=doc.get("backend", "resolvconf"),
                link=doc.get("link", ""),
            )
        except (TypeError, ValueError) as exc:
            raise StateError(f"state file has a bad field: {exc}") from None
        if rec.backend not in ("resolvconf", "resolved") or not isinstance(rec.link, str):
            raise StateError(f"state file has a bad backend {rec.backend!r} or link {rec.link!r}")
        if rec.written_fingerprint is not None and not (
            isinstance(rec.written_fingerprint, str) and len(rec.written_fingerprint) == 64
        ):
            raise StateError("state file has a bad written_fingerprint")
        try:
            resolvconf.parse_untrusted(rec.original_text)
        except resolvconf.ResolvConfError as exc:
            raise StateError(f"state file's recorded resolv.conf is unusable: {exc}") from None
        return rec


def _str(doc: dict, key: str) -> str:
    v = doc.get(key)
    if not isinstance(v, str):
        raise StateError(f"state file field {key!r} is missing or not text")
    return v


def _list(doc: dict, key: str) -> list:
    v = doc.get(key, [])
    if not isinstance(v, list):
        raise StateError(f"state file field {key!r} is not a list")
    return v


def _learned(x, *, ip: bool) -> Learned:
    if not isinstance(x, dict) or not isinstance(x.get("value"), str) or not isinstance(x.get("iface", ""), str):
        raise StateError(f"state file entry {x!r} is not {{value, iface}}")
    if ip:
        ipaddress.ip_address(x["value"])
    return Learned(x["value"], x.get("iface", ""))


def record(machine_id: str, path: str, text: str, rc: resolvconf.ResolvConf, iface_of: dict[str, str],
           search_iface: dict[str, str], *, listen: str, now: float, pid: int = 0) -> StateRecord:
    """Build the record for a parsed file; ``iface_of`` maps server -> interface it came from."""
    return StateRecord(
        machine_id=machine_id, path=path, original_text=text,
        servers=[Learned(s, iface_of.get(s, "")) for s in rc.nameservers],
        search=[Learned(d, search_iface.get(d, "")) for d in rc.search],
        listen=listen, recorded_at=now, pid=pid,
    )


@dataclass(frozen=True)
class RestorePlan:
    """What a restore does: write ``text`` to the file, or leave it and say why."""

    write: bool
    text: str | None
    reason: str


def restore_plan(current_text: str | None, rec: StateRecord | None, machine_id: str,
                 state_problem: str | None = None) -> RestorePlan:
    """Decide a restore from the file as it is now and the record (either may be missing).

    Rule: only ever overwrite a file that is still the one we wrote.  When the
    record cannot be trusted (missing, corrupt, another machine's) but the file
    is ours, the original it carries as comments is put back instead, so the
    machine is never left pointing at a stub that is not running.
    """
    if current_text is None:
        if rec is not None and rec.machine_id == machine_id and rec.written_fingerprint:
            return RestorePlan(True, rec.original_text, "resolv.conf is missing; putting back the recorded one")
        return RestorePlan(False, None, "resolv.conf is missing and there is nothing trustworthy to put back")
    fp = resolvconf.fingerprint(current_text)
    if rec is not None and rec.machine_id != machine_id:
        state_problem = (f"state file was recorded on another machine (machine id {rec.machine_id[:12]}..., "
                         f"this one is {machine_id[:12]}...); its servers are not used")
        rec = None
    if rec is not None:
        if rec.written_fingerprint is None:
            return RestorePlan(False, None, "nothing to restore: ztna roaming does not own resolv.conf (never took over, or backed off)")
        if fp == rec.written_fingerprint:
            return RestorePlan(True, rec.original_text, "resolv.conf is still the one ztna roaming wrote; putting back the recorded original")
        if resolvconf.is_ours(current_text):
            orig = resolvconf.embedded_original(current_text)
            return RestorePlan(True, orig, "resolv.conf is an older file of ztna roaming; putting back the original it carries")
        return RestorePlan(False, None, "resolv.conf was changed by someone else since ztna roaming wrote it; leaving it as it is")
    if resolvconf.is_ours(current_text):
        orig = resolvconf.embedded_original(current_text)
        why = state_problem or "no state file"
        return RestorePlan(True, orig, f"{why}; resolv.conf is ours, putting back the original it carries")
    why = state_problem or "no state file"
    return RestorePlan(False, None, f"{why}; resolv.conf is not ours, nothing to restore")
