"""Local users: names and scrypt password hashes in one 0600 JSON file.

The file is ``{"users": {"alice": "scrypt$N$r$p$salt$hash"}}`` (base64url
salt and hash).  scrypt comes from ``cryptography``; verification compares in
constant time, and a name that does not exist still costs one scrypt run, so
the time a login takes does not say whether the user exists.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ztna import files

# 2**14 x 8 = 16 MiB and ~50 ms per guess on the lab's machine: the cost OWASP names for scrypt.
N, R, P, LENGTH = 2 ** 14, 8, 1, 32
USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_PASSWORD = 1024


class UserError(ValueError):
    """The users file or a user name is wrong; the message says what to do."""


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(t: str) -> bytes:
    return base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = Scrypt(salt=salt, length=LENGTH, n=N, r=R, p=P).derive(password.encode())
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def check_password(stored: str, password: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time compare inside ``verify``)."""
    try:
        tag, n, r, p, salt, digest = stored.split("$")
        if tag != "scrypt":
            return False
        kdf = Scrypt(salt=_unb64(salt), length=len(_unb64(digest)), n=int(n), r=int(r), p=int(p))
        kdf.verify(password.encode(), _unb64(digest))
        return True
    except (InvalidKey, ValueError, binascii.Error):
        return False


_DUMMY = hash_password("not a password anyone has", salt=b"\0" * 16)


def valid_name(name: str) -> str:
    if not USER_NAME.fullmatch(name):
        raise UserError(f"user name {name[:70]!r} must be 1-64 of letters, digits and ._@-")
    return name


class UserStore:
    """The users file; every change is written back atomically, 0600."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.users: dict[str, str] = {}
        self.mtime = 0
        if self.path.exists():
            self._read()

    def refresh(self) -> None:
        """Read the file again if it changed (``ztna gateway user ...`` while the gateway runs)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self.users, self.mtime = {}, 0
            return
        if mtime != self.mtime:
            self._read()

    def _read(self) -> None:
        try:
            data = json.loads(self.path.read_text())
            users = data["users"]
            if not isinstance(users, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in users.items()):
                raise ValueError("'users' must map names to hashes")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.path} is not a ztna users file ({exc}); fix or remove it") from exc
        self.users = users
        self.mtime = self.path.stat().st_mtime_ns

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(self.path, json.dumps({"users": self.users}, indent=1, sort_keys=True) + "\n", 0o600)

    def add(self, name: str, password: str) -> None:
        if valid_name(name) in self.users:
            raise UserError(f"user {name} exists already: use 'ztna gateway user passwd {name}'")
        self._set(name, password)

    def passwd(self, name: str, password: str) -> None:
        if name not in self.users:
            raise UserError(f"no user {name}: add it with 'ztna gateway user add {name}'")
        self._set(name, password)

    def _set(self, name: str, password: str) -> None:
        if not 8 <= len(password) <= MAX_PASSWORD:
            raise UserError(f"a password needs 8 to {MAX_PASSWORD} characters")
        self.users[name] = hash_password(password)
        self.save()

    def remove(self, name: str) -> None:
        if self.users.pop(name, None) is None:
            raise UserError(f"no user {name} in {self.path}")
        self.save()

    def verify(self, name: str, password: str) -> bool:
        """Blocking (one scrypt run, also for unknown names): call it off the event loop."""
        stored = self.users.get(name)
        if len(password) > MAX_PASSWORD:
            password = password[:MAX_PASSWORD]
        ok = check_password(stored or _DUMMY, password)
        return ok and stored is not None
