"""How a person proves who they are: one small interface, one backend today.

The request core (:mod:`.exchange`) knows only :class:`Backend`: what to show
a browser that must sign in (``challenge``), which claimed user a submitted
form names (``claimed``, for rate limiting and the log) and whether the proof
holds (``verify``, blocking: the shell runs it off the event loop).  The
session cookie, CSRF, rate limits and authorisation stay in the core, so a
new backend (an OIDC one would answer ``challenge`` with a redirect to its
provider and ``verify`` with the code exchange) never touches the proxy.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from . import pages
from .users import UserError, UserStore


class Backend(Protocol):
    """An authentication backend (see the module docstring)."""

    name: str

    def challenge(self, app: str, *, csrf: str, next_url: str, message: str = "", error: bool = False) -> bytes:
        """The HTML shown on the sign-in page."""

    def claimed(self, form: dict[str, str]) -> str | None:
        """The user a submitted form claims to be (None: the form is incomplete)."""

    def verify(self, form: dict[str, str]) -> bool:
        """True when the form proves the claimed user (may block: called off the loop)."""

    def stamp(self, user: str) -> str | None:
        """A short version of ``user``'s credentials, None when the user no longer exists (cheap: per request).

        Sealed in the session at sign-in and compared on every request, so removing the user or
        changing the password ends the sessions signed in before."""


class LocalPasswords:
    """Users and scrypt hashes from the users file (``ztna gateway user ...``)."""

    name = "local"

    def __init__(self, store: UserStore):
        self.store = store

    def challenge(self, app: str, *, csrf: str, next_url: str, message: str = "", error: bool = False) -> bytes:
        return pages.login(app, csrf=csrf, next_url=next_url, message=message, error=error)

    def claimed(self, form: dict[str, str]) -> str | None:
        user = form.get("user", "").strip()
        return user if user and "password" in form and len(user) <= 64 else None

    def verify(self, form: dict[str, str]) -> bool:
        try:
            self.store.refresh()
        except UserError:
            pass  # keep the users read last time; the file is being fixed
        return self.store.verify(form.get("user", "").strip(), form.get("password", ""))

    def stamp(self, user: str) -> str | None:
        try:
            self.store.refresh()  # a stat; the file is read again only when its mtime changed
        except UserError:
            pass
        stored = self.store.users.get(user)
        if stored is None:
            return None
        # A hash of the stored hash (salt included): changes with every passwd, says nothing of the password.
        return hashlib.sha256(stored.encode()).hexdigest()[:16]
