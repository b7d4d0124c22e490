"""A real systemd-resolved inside one lab namespace, with its own D-Bus system bus.

systemd-resolved does not need systemd as PID 1: it needs a system bus to
register org.freedesktop.resolve1 on (resolvectl talks to it there), a
writable /run/systemd/resolve, and a user named systemd-resolve to drop to.
The lab gives it all three without touching the machine:

- a dbus-daemon of the lab's own, listening on a socket in the lab folder;
  resolved and every resolvectl find it through DBUS_SYSTEM_BUS_ADDRESS;
- resolved runs in the mount namespace ``ip netns exec`` makes for it, where
  a lab folder is bind-mounted over /run/systemd (so its stub-resolv.conf,
  its varlink socket and the resolved.conf.d drop-in the lab writes live in
  the lab) and lab copies of /etc/passwd and /etc/group add the
  systemd-resolve user.  That user is mapped to uid 0: the lab's dbus-daemon
  did not complete the D-Bus hello of an unprivileged uid it cannot look up,
  and root inside a lab namespace reaches nothing outside it anyway.

The binaries come from Debian's systemd-resolved package, unpacked (not
installed: its postinst would turn the machine's /etc/resolv.conf into a link)
by scripts/fetch-resolved.sh into ZTNA_RESOLVED_ROOT.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import procs

ROOT = Path(os.environ.get("ZTNA_RESOLVED_ROOT", "/var/cache/ztna-lab/systemd-resolved"))

DBUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/><allow send_type="signal"/>
    <allow send_type="method_return"/><allow send_type="error"/>
    <allow receive_type="method_call"/><allow receive_type="signal"/>
    <allow receive_type="method_return"/><allow receive_type="error"/>
  </policy>
</busconfig>
"""


def binaries() -> tuple[Path, Path]:
    return ROOT / "lib/systemd/systemd-resolved", ROOT / "usr/bin/resolvectl"


def missing() -> str | None:
    """Why a real resolved cannot run here (None when it can)."""
    daemon, ctl = binaries()
    if not (daemon.exists() and ctl.exists()):
        return f"systemd-resolved is not unpacked in {ROOT}; run scripts/fetch-resolved.sh"
    if not shutil.which("dbus-daemon"):
        return "dbus-daemon is not installed (apt-get install dbus)"
    return None


@dataclass
class Resolved:
    host: str
    dir: Path
    bus: str
    resolvectl: str

    @property
    def env(self) -> dict:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.bus}

    @property
    def stub_file(self) -> Path:
        return self.dir / "run/systemd/resolve/stub-resolv.conf"

    def ctl(self, lab, *args: str, timeout: float = 10):
        """Run resolvectl in the host's namespace; (returncode, stdout, stderr)."""
        r = lab.exec(self.host, [self.resolvectl, *args], timeout=timeout, env=self.env)
        return r.returncode, r.stdout.decode(), r.stderr.decode()


def start(lab, host: str, dns: list[str], domains: list[str] = ()) -> Resolved:
    """dbus-daemon and systemd-resolved in ``host``'s namespace; global DNS ``dns`` (and search ``domains``);
    both stopped by the lab."""
    why = missing()
    if why:
        raise RuntimeError(why)
    daemon, ctl = binaries()
    d = lab.root / f"resolved-{host}"
    (d / "run/systemd/resolve").mkdir(parents=True, exist_ok=True)
    (d / "run/systemd/resolved.conf.d").mkdir(parents=True, exist_ok=True)
    (d / "etc").mkdir(exist_ok=True)
    sock = d / "bus.sock"
    (d / "dbus.conf").write_text(DBUS_CONF.format(sock=sock))
    (d / "etc/passwd").write_text(Path("/etc/passwd").read_text() + "systemd-resolve:x:0:0:lab resolved:/:/usr/sbin/nologin\n")
    (d / "etc/group").write_text(Path("/etc/group").read_text() + "systemd-resolve:x:0:\n")
    # The lab's uplink DNS is resolved's global server; nothing else (no fallback servers, no multicast).
    (d / "run/systemd/resolved.conf.d/lab.conf").write_text(
        "[Resolve]\nDNS=" + " ".join(dns) + "\nFallbackDNS=\nDomains=" + " ".join(domains) + "\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n"
        "DNSOverTLS=no\nCache=no\nDNSStubListener=yes\n")
    # Programs in the namespace ask resolved's stub, as on a host whose resolv.conf links to it.
    lab.set_resolvers(host, ["127.0.0.53"])
    bus = f"unix:path={sock}"
    p = lab.start(host, ["dbus-daemon", f"--config-file={d / 'dbus.conf'}", "--nofork", "--nopidfile"],
                  name=f"dbus-{host}")
    procs.wait_until(lambda: sock.exists() or not p.alive(), what=f"the lab's D-Bus on {host}")
    if not p.alive():
        raise RuntimeError(f"dbus-daemon on {host} exited: {Path(p.log).read_text(errors='replace')[-1000:]}")
    script = (f"mount --bind {d / 'run/systemd'} /run/systemd && mount --bind {d / 'etc/passwd'} /etc/passwd && "
              f"mount --bind {d / 'etc/group'} /etc/group && exec {daemon}")
    r = lab.start(host, ["sh", "-c", script], name=f"resolved-{host}", env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
    res = Resolved(host, d, bus, str(ctl))

    def answering() -> bool:
        if not r.alive():
            raise RuntimeError(f"systemd-resolved on {host} exited: {Path(r.log).read_text(errors='replace')[-1500:]}")
        return res.ctl(lab, "dns", timeout=5)[0] == 0

    procs.wait_until(answering, timeout=15, interval=0.2, what=f"systemd-resolved on {host} to answer on D-Bus")
    procs.wait_listening(r, "127.0.0.53", 53, "udp")
    return res
