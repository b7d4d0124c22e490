"""Signed, expiring tokens: the session cookie and the login form's CSRF token.

A token is ``base64url(payload) "." base64url(HMAC-SHA256(key, payload))``;
the payload is compact JSON.  Nothing is encrypted (the payload names the
user and the app, which the user knows); what matters is that nobody without
the key can make or change one.  The key lives in a 0600 file.

:meth:`Signer.open_untrusted` reads a token a client sent and raises only
:class:`BadToken`, whose ``why`` is one of ``malformed``, ``tampered``,
``expired``, ``other-app`` or ``wrong-kind``: the gateway logs which.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ztna import files

KEY_BYTES = 32
MAX_TOKEN = 2048  # a session token is ~200 bytes; anything far longer is not ours


class BadToken(Exception):
    """A token the gateway will not accept; ``why`` names the reason for the log."""

    def __init__(self, why: str, detail: str):
        super().__init__(f"{why}: {detail}")
        self.why = why


@dataclass(frozen=True)
class Session:
    """What a valid session cookie says."""

    identity: str
    host: str
    issued: int
    expires: int
    sid: str
    stamp: str = ""  # the backend's credential version at sign-in (Backend.stamp)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    """HMAC-SHA256 tokens under one key (see the module docstring)."""

    def __init__(self, key: bytes):
        if len(key) < KEY_BYTES:
            raise ValueError(f"a signing key needs at least {KEY_BYTES} bytes")
        self.key = key
        self._verified: dict[tuple[str, str], Session] = {}

    def seal(self, kind: str, fields: dict) -> str:
        payload = json.dumps({"k": kind, **fields}, separators=(",", ":"), sort_keys=True).encode()
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def open_untrusted(self, token: str, kind: str, *, host: str, now: float) -> dict:
        """The fields of a token of ``kind`` for ``host`` that has not expired; raises BadToken."""
        if len(token) > MAX_TOKEN or token.count(".") != 1:
            raise BadToken("malformed", "not a ztna token")
        body, _, mac_text = token.partition(".")
        try:
            payload, mac = _unb64(body), _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise BadToken("malformed", "not base64url") from None
        want = hmac.new(self.key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):  # constant time: no byte-by-byte oracle
            raise BadToken("tampered", "signature does not match (changed, or signed by another key)")
        try:
            fields = json.loads(payload)
        except ValueError:
            raise BadToken("malformed", "signed payload is not JSON") from None
        if not isinstance(fields, dict) or fields.get("k") != kind:
            raise BadToken("wrong-kind", f"not a {kind} token")
        if fields.get("h") != host:
            raise BadToken("other-app", f"issued for {str(fields.get('h'))[:100]}, presented to {host}")
        exp = fields.get("exp")
        if not isinstance(exp, int) or now >= exp:
            raise BadToken("expired", f"expired {int(now - exp) if isinstance(exp, int) else '?'}s ago")
        return fields

    # ---- the session cookie ----------------------------------------------------
    def session(self, identity: str, host: str, now: float, ttl: float, stamp: str = "") -> tuple[str, Session]:
        s = Session(identity, host, int(now), int(now + ttl), secrets.token_urlsafe(12), stamp)
        return self.seal("session", {"u": identity, "h": host, "iat": s.issued, "exp": s.expires, "sid": s.sid,
                                     "pw": stamp}), s

    VERIFIED_MAX = 4096

    def open_session_untrusted(self, token: str, host: str, now: float) -> Session:
        # A browser presents the same cookie on every request: a token whose signature was checked
        # once is remembered by its exact text (and host), so a kept-alive request costs a dict
        # lookup and the expiry check, not base64, HMAC and JSON again.  The memo is cleared whole
        # when it fills; a forged token never enters it.
        hit = self._verified.get((token, host))
        if hit is not None:
            if now >= hit.expires:
                raise BadToken("expired", f"expired {int(now - hit.expires)}s ago")
            return hit
        f = self.open_untrusted(token, "session", host=host, now=now)
        if not isinstance(f.get("u"), str) or not isinstance(f.get("sid"), str) or not isinstance(f.get("iat"), int):
            raise BadToken("malformed", "session token lacks its fields")
        stamp = f.get("pw", "")
        s = Session(f["u"], host, f["iat"], f["exp"], f["sid"], stamp if isinstance(stamp, str) else "")
        if len(self._verified) >= self.VERIFIED_MAX:
            self._verified.clear()
        self._verified[(token, host)] = s
        return s

    # ---- the login form's CSRF token ---------------------------------------------
    def csrf(self, host: str, now: float, ttl: float = 900) -> str:
        return self.seal("csrf", {"h": host, "exp": int(now + ttl), "n": secrets.token_urlsafe(16)})


class Revoked:
    """Session ids ended by logout, kept until they would have expired anyway.

    A signed cookie is valid wherever it is replayed; a copy taken before
    logout must stop working too, so the gateway remembers ended sessions.
    With ``path`` they are also a journal on disk (one ``sid expires`` line
    each, appended and flushed at logout), read back at start, so a restart
    does not bring a logged-out cookie back to life.  Expired lines are
    dropped when the journal is rewritten (at start and on ``expire``);
    lines that do not parse are skipped and counted in ``skipped``.
    """

    def __init__(self, limit: int = 100_000, path: Path | None = None, now: float | None = None):
        self.until: dict[str, int] = {}
        self.limit = limit
        self.path = Path(path) if path else None
        self.skipped = 0
        self._journal = None
        if self.path is not None:
            self._load(time.time() if now is None else now)

    def _load(self, now: float) -> None:
        try:
            text = self.path.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines():
            sid, _, exp = line.partition(" ")
            if not sid or not exp.isdigit() or len(sid) > 64:
                self.skipped += 1
                continue
            if int(exp) > now:
                self.until[sid] = int(exp)
        self._rewrite()

    def _rewrite(self) -> None:
        if self.path is None:
            return
        if self._journal is not None:
            self._journal.close()
        files.write_atomic(self.path, "".join(f"{sid} {exp}\n" for sid, exp in self.until.items()), 0o600)
        self._journal = open(self.path, "a", buffering=1, encoding="ascii")

    def add(self, sid: str, expires: int, now: float) -> None:
        if len(self.until) >= self.limit:
            self.expire(now)
        self.until[sid] = expires
        if self._journal is not None:
            self._journal.write(f"{sid} {expires}\n")

    def __contains__(self, sid: str) -> bool:
        return sid in self.until

    def expire(self, now: float) -> None:
        gone = [s for s, t in self.until.items() if t <= now]
        for sid in gone:
            del self.until[sid]
        if gone:
            self._rewrite()


def load_or_create_key(path: Path) -> bytes:
    """The signing key from ``path``, made (0600) on first use; refuses a key others can read."""
    path = Path(path)
    if not path.exists():
        files.write_atomic(path, secrets.token_bytes(KEY_BYTES), 0o600)
    st = path.stat()
    if st.st_mode & 0o077:
        raise PermissionError(f"{path} is readable by others (mode {st.st_mode & 0o777:o}): chmod 600 {path}")
    key = path.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path} holds {len(key)} bytes; a session key needs {KEY_BYTES}: remove it to make a new one")
    return key

