"""Taking over the machine's DNS, and giving it back.

At start the agent records the resolver file as it was, then points it at the
DNS stub on its adapter.  It gives the file back on stop; after a crash a
guardian process (forked at start, woken when the agent's end of a pipe closes
or when it finds itself re-parented)
gives it back at once, and the next start or ``ztna agent restore`` does it if
the guardian was killed too.  The file is given back only if it is still the
one the agent wrote, so a change made by somebody else is never undone.

On a host where systemd-resolved manages DNS (ztna/resolved.py decides), the
file is not touched at all: the stub and the app domains go on the agent's own
link, and giving back is ``resolvectl revert`` on that link.  The state file
says which of the two was done, so the guardian and ``ztna agent restore`` undo
the right one.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
from pathlib import Path

from ztna import files, resolvconf, resolvectl
from ztna.resolved import ResolvedError, servers_of

log = logging.getLogger("ztna.agent")

MARK = "# written by the ztna agent"


class TakeoverError(RuntimeError):
    """The resolver file could not be read, written or given back."""


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf text, in order (TakeoverError if it is not one)."""
    try:
        return resolvconf.parse_untrusted(text).nameservers
    except resolvconf.ResolvConfError as exc:
        raise TakeoverError(f"the resolver file is not usable: {exc}") from exc


def render(original: str, stub: str, state_path: Path, pid: int) -> str:
    """The file the agent writes: its stub first, the original search list and options kept."""
    try:
        rc = resolvconf.parse_untrusted(original)
    except resolvconf.ResolvConfError as exc:
        raise TakeoverError(f"the resolver file is not usable: {exc}") from exc
    ours = resolvconf.ResolvConf(nameservers=[stub], search=rc.search, options=rc.options)
    return resolvconf.render(ours, header=[f"{MARK} (pid {pid}); the original is kept in {state_path} "
                                           "and put back when it stops"])


def take_over(resolv: Path, stub: str, state_path: Path, pid: int) -> list[str]:
    """Record the resolver file and point it at ``stub``; return the original resolvers."""
    try:
        original = resolv.read_text()
    except OSError as exc:
        raise TakeoverError(f"cannot read {resolv}: {exc}") from exc
    if MARK in original:
        raise TakeoverError(f"{resolv} was written by a ztna agent that did not give it back; run 'ztna agent restore' first")
    servers = [s for s in nameservers(original) if s != stub]
    if not servers:
        raise TakeoverError(f"{resolv} names no nameserver; the agent needs the machine's resolvers to forward "
                            "ordinary names and to find the gateway")
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = {"resolv_conf": str(resolv), "original": original, "pid": pid, "stub": stub}
    files.write_atomic(state_path, json.dumps(state), 0o600)
    files.write_atomic(resolv, render(original, stub, state_path, pid))
    return servers


def take_over_link(tool: str, link: str, stub: str, domains: list[str], dns_output: str,
                   state_path: Path, pid: int) -> list[str]:
    """systemd-resolved: put ``stub`` and the routing ``domains`` on ``link``; return the servers for other names.

    ``dns_output`` is ``resolvectl dns`` as it was before; its servers (global
    and other links') are where the agent sends names it does not own and
    where it looks up its gateway.  Nothing global is changed.
    """
    servers = [s for s in servers_of(dns_output, exclude_link=link) if s != stub]
    if not servers:
        raise TakeoverError("systemd-resolved knows no DNS server ('resolvectl dns' names none); the agent needs "
                            "them to forward ordinary names and to find the gateway")
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = {"backend": "resolved", "link": link, "resolvectl": tool, "pid": pid, "stub": stub, "domains": domains}
    files.write_atomic(state_path, json.dumps(state), 0o600)
    try:
        resolvectl.apply(tool, link, [stub], domains)
    except ResolvedError as exc:
        state_path.unlink()
        raise TakeoverError(f"systemd-resolved refused the agent's link settings: {exc}; DNS left as it was") from exc
    return servers


def restore(state_path: Path) -> str:
    """Give back what the state records (the file if still ours, or the resolved link); remove the state."""
    try:
        state = json.loads(state_path.read_text())
        if state.get("backend") == "resolved":
            return _restore_link(state_path, state)
        resolv, original = Path(state["resolv_conf"]), state["original"]
    except FileNotFoundError:
        return "nothing to restore: no DNS takeover is recorded"
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TakeoverError(f"{state_path} is corrupt ({exc}); check {state_path} and the resolver file by hand") from exc
    try:
        current = resolv.read_text()
    except FileNotFoundError:
        current = ""
    if current and MARK not in current:
        state_path.unlink()
        return f"{resolv} was changed by something else since the agent wrote it; left as it is"
    files.write_atomic(resolv, original)
    state_path.unlink()
    return f"restored {resolv} ({', '.join(nameservers(original)) or 'no nameserver'})"


def _restore_link(state_path: Path, state: dict) -> str:
    link, tool = state["link"], state["resolvectl"]
    if not isinstance(link, str) or not isinstance(tool, str):
        raise TypeError("link and resolvectl must be text")
    try:
        msg = resolvectl.revert(tool, link)
    except ResolvedError as exc:
        # The record stays: 'ztna agent restore' or the next start tries again.
        raise TakeoverError(f"cannot give DNS back to systemd-resolved: {exc}; {state_path} is kept so that "
                            f"'ztna agent restore' can try again") from exc
    state_path.unlink()
    return msg


def recover_stale(state_path: Path) -> str | None:
    """At start: give back what a dead agent left taken over."""
    try:
        pid = json.loads(state_path.read_text()).get("pid")
    except FileNotFoundError:
        return None
    except ValueError:
        return restore(state_path)
    if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
        raise TakeoverError(f"another ztna agent (pid {pid}) holds the DNS takeover; stop it first")
    return restore(state_path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def start_guardian(state_path: Path) -> int:
    """Fork a process that restores DNS if this one dies without doing it. Returns the write end to keep open."""
    r, w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # guardian
        try:
            os.close(w)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # EOF: the agent is gone, however it ended.  A child the agent forked later
            # (pyroute2 forks helpers) holds a copy of the write end, so EOF can come
            # late: being re-parented says the agent is gone just as surely.
            while os.getppid() == parent:
                ready, _, _ = select.select([r], [], [], 0.2)
                if ready and not os.read(r, 1):
                    break
            try:
                state = json.loads(state_path.read_text())
                if state.get("pid") == parent:
                    msg = restore(state_path)
                    print(f"ztna agent guardian: agent {parent} died without giving DNS back: {msg}", flush=True)
            except TakeoverError as exc:
                print(f"ztna agent guardian: agent {parent} died; giving DNS back failed: {exc}", flush=True)
            except (FileNotFoundError, ValueError):
                pass
        finally:
            os._exit(0)
    os.close(r)
    os.set_inheritable(w, False)
    return w
