"""The pages the gateway itself shows a browser: login, refusals, errors.

Every text that comes from outside (a user name, a reason naming a host) is
HTML-escaped; every page is small, self-contained and closes nothing itself
(the caller decides about the connection).
"""

from __future__ import annotations

import html

REASONS = {200: "OK", 302: "Found", 303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
           413: "Content Too Large", 421: "Misdirected Request", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           505: "HTTP Version Not Supported"}

_STYLE = ("body{font-family:sans-serif;max-width:34em;margin:4em auto;color:#222}"
          "h1{font-size:1.4em}.why{background:#fee;border:1px solid #c99;padding:.6em}"
          "form p{margin:.6em 0}input{font-size:1em;padding:.3em}")


def _doc(title: str, inner: str) -> bytes:
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{inner}<p><small>ztna gateway</small></p></body></html>\n").encode()


def login(app: str, *, csrf: str, next_url: str, message: str = "", error: bool = False) -> bytes:
    note = f"<p class={'why' if error else 'note'} id=message>{html.escape(message)}</p>" if message else ""
    return _doc(f"Sign in to {app}", (
        f"<h1>Sign in to {html.escape(app)}</h1>{note}"
        f"<form method=post action=\"/.ztna/login\" id=login>"
        f"<input type=hidden name=csrf value=\"{html.escape(csrf)}\">"
        f"<input type=hidden name=next value=\"{html.escape(next_url)}\">"
        f"<p><label>User <input name=user id=user autocomplete=username required></label></p>"
        f"<p><label>Password <input name=password id=password type=password autocomplete=current-password required></label></p>"
        f"<p><button type=submit id=submit>Sign in</button></p></form>"))


def refusal(status: int, title: str, reason: str, *, hint: str = "") -> bytes:
    extra = f"<p>{html.escape(hint)}</p>" if hint else ""
    return _doc(f"{status} {title}", f"<h1>{status} {html.escape(title)}</h1><p class=why id=reason>{html.escape(reason)}</p>{extra}")
