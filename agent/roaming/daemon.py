"""The running client: recover, take over, serve, watch, restore.

Order at start, chosen so that a crash at any point leaves working DNS:
1. recover: if an earlier run left its file in place (crash, kill -9), put the
   original back first (only if the file is still the one it wrote);
2. read and check resolv.conf (malformed: stop here, file untouched);
3. bind the stub (address taken: report the clash, never take over);
4. write the state file, then the new resolv.conf (a crash between the two
   leaves the original file and a record that no longer matches it).
On SIGTERM/SIGINT the original is put back, then the stub stops.

Where systemd-resolved manages DNS (resolv.conf links to its stub file;
ztna/resolved.py decides) no file is written: the client opens a TUN link of
its own (``resolved_link``) carrying its loopback ``listen`` address, records
the servers and domains resolved uses per link, and gives its link that
address with the routing domain ``~.`` and the default route, so resolved
sends it every name no other link claims more precisely.  Giving back is
``resolvectl revert`` and closing the link; a crash closes the link with the
process, and resolved forgets its settings with it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import secrets
import signal
import time
from pathlib import Path

from ztna import resolvconf, resolvectl
from ztna.resolved import RESOLVED, ResolvedError, domains_by_link, servers_by_link

from . import backend, conflict, split
from . import status as st
from .config import EGRESS_LEARNED, Config
from .state import Learned, StateError, StateRecord, record, restore_plan
from .stub import Forwarder, Stub, who_listens

log = logging.getLogger("ztna.roaming")


class StartError(RuntimeError):
    """The client cannot start; the message says what to fix. DNS is left as it was."""


def load_state(path: Path) -> tuple[StateRecord | None, str | None]:
    """The state record and, when it cannot be used, why (missing is not a problem)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"state file {path} is not readable: {exc.strerror}"
    try:
        return StateRecord.from_json_untrusted(data), None
    except StateError as exc:
        return None, f"state file {path} is corrupt ({exc})"


def save_state(path: Path, rec: StateRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend.atomic_write(path, rec.to_json(), mode=0o600)


def restore(cfg: Config, mid: str) -> tuple[bool, str]:
    """Put the recorded DNS settings back if the file is still ours; returns (restored, what happened)."""
    rec, problem = load_state(cfg.state_file)
    if rec is not None and rec.backend == RESOLVED and rec.machine_id == mid:
        try:
            what = resolvectl.revert(cfg.resolvectl, rec.link)
        except ResolvedError as exc:
            # The record stays, so a later 'ztna roaming restore' can finish the job.
            return False, f"cannot give DNS back to systemd-resolved: {exc}; {cfg.state_file} kept"
        cfg.state_file.unlink()
        return True, what
    try:
        raw = cfg.resolv_conf.read_bytes()
        current: str | None = raw.decode("utf-8", errors="replace")
    except FileNotFoundError:
        current = None
    except OSError as exc:
        return False, f"cannot read {cfg.resolv_conf}: {exc.strerror}"
    if rec is not None and rec.path != str(cfg.resolv_conf):
        problem = f"state file belongs to {rec.path}, not {cfg.resolv_conf}"
        rec = None
    plan = restore_plan(current, rec, mid, problem)
    if plan.write and plan.text is not None:
        backend.atomic_write(cfg.resolv_conf, plan.text)
    # The record has done its job (or cannot be trusted): keep a corrupt or
    # foreign one aside for a person to look at, never act on it again.
    if cfg.state_file.exists():
        if problem or (rec is not None and rec.machine_id != mid):
            aside = cfg.state_file.with_name(f"state.json.bad-{int(time.time())}")
            os.replace(cfg.state_file, aside)
            log.warning("moved the unusable state file to %s", aside)
        else:
            cfg.state_file.unlink()
    return plan.write, plan.reason


class Daemon:
    """One running roaming client (see the module docstring for the order of things)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.mid = backend.machine_id(cfg.machine_id_file)
        self.device_id = cfg.device_id or f"roaming-{self.mid[:12]}"
        self.detector = conflict.ConflictDetector(cfg.conflict)
        self.ifaces = conflict.Interfaces()
        self.tracker = st.Tracker()
        self.health = st.CloudHealth(fail_after=cfg.cloud_fail_after, probe_every=cfg.cloud_probe_every)
        self.rec: StateRecord | None = None
        self.clash = ""
        self.problem = ""
        self.owning = False
        self.stub: Stub | None = None
        self.resolved = False  # the systemd-resolved backend (decided in preflight)
        self.link = None       # its TUN (ztna.tun.Tun) while it is open
        self.fwd = Forwarder(split.SplitDNS(), self.device_id, self.health, fail_open=cfg.fail_open,
                             pin_internal=cfg.egress == EGRESS_LEARNED, timeout=cfg.upstream_timeout,
                             cloud_port=cfg.cloud_port, probe_token=secrets.token_hex(8),
                             on_health=self.refresh_status)
        self.started = time.time()
        self._stop = asyncio.Event()
        self._last_status_write = 0.0
        self._last_counters: dict = {}

    # ---- the facts, and what status says about them ----------------------
    def refresh_status(self) -> None:
        facts = st.Facts(owning=self.owning, stub_bound=self.stub is not None, clash=self.clash,
                         backed_off=self.detector.reason if self.detector.backed_off else "",
                         cloud_up=self.health.up, fail_open=self.cfg.fail_open, problem=self.problem)
        now = time.time()
        if self.tracker.update(st.derive(facts), now):
            v = self.tracker.verdict
            log.warning("status: %s%s: %s", v.state, f" ({v.reason})" if v.reason else "", v.detail)
            self.write_status()
        elif now - self._last_status_write > 2.0 or self.fwd.counters.to_dict() != self._last_counters:
            self.write_status()

    def write_status(self) -> None:
        self._last_status_write = time.time()
        self._last_counters = self.fwd.counters.to_dict()
        doc = {
            **self.tracker.to_dict(),
            "pid": os.getpid(),
            "started": self.started,
            "listen": f"{self.cfg.listen}:{self.cfg.port}",
            "resolv_conf": str(self.cfg.resolv_conf),
            "backend": RESOLVED if self.resolved else "resolvconf",
            "resolved_link": self.cfg.resolved_link if self.resolved else "",
            "device_id": self.device_id,
            "egress": self.cfg.egress,
            "fail_open": self.cfg.fail_open,
            "cloud": self.cfg.cloud,
            "cloud_up": self.health.up,
            "recorded_servers": [s.__dict__ for s in (self.rec.servers if self.rec else [])],
            "recorded_search": [s.__dict__ for s in (self.rec.search if self.rec else [])],
            "internal_domains": self.cfg.internal_domains,
            "conflict": {"threshold": self.cfg.conflict.threshold, "window": self.cfg.conflict.window,
                         "foreign_rewrites": self.detector.total_rewrites, "backed_off": self.detector.backed_off,
                         "backed_off_at": self.detector.backed_off_at},
            "queries": self.fwd.counters.to_dict(),
        }
        try:
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            backend.atomic_write(self.cfg.status_file, json.dumps(doc, indent=2) + "\n")
        except backend.BackendError as exc:
            log.warning("cannot write status: %s", exc)

    # ---- start ------------------------------------------------------------
    def preflight(self) -> None:
        """Checks that need no change to the machine; StartError says what is wrong."""
        try:
            choice, _ = resolvectl.choose(self.cfg.backend, self.cfg.resolv_conf, self.cfg.resolvectl)
        except ResolvedError as exc:
            raise StartError(str(exc)) from None
        self.resolved = choice.backend == RESOLVED
        log.info("DNS backend %s: %s", choice.backend, choice.reason)
        ok, what = restore(self.cfg, self.mid)
        (log.warning if ok else log.info)("recovery at start: %s", what)
        if self.resolved:
            return
        try:
            text = backend.read_text(self.cfg.resolv_conf)
        except resolvconf.ResolvConfError as exc:
            raise StartError(f"{self.cfg.resolv_conf} is malformed ({exc}); not taking over, DNS left as it is. "
                             f"Fix the file and start again.") from None
        except backend.BackendError as exc:
            raise StartError(str(exc)) from None
        if text is None:
            raise StartError(f"{self.cfg.resolv_conf} does not exist; there are no DNS servers to record")

    async def bind_stub(self) -> bool:
        stub = Stub(self.fwd, self.cfg.listen, self.cfg.port)
        try:
            await stub.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                who = who_listens(self.cfg.listen, self.cfg.port) or "another program"
                self.clash = (f"{self.cfg.listen}:{self.cfg.port} is already served by {who}: it, not ztna roaming, "
                              f"would receive the machine's queries. Set listen to a free loopback address "
                              f"(e.g. 127.0.2.1) in the config.")
                log.error("loopback clash: %s", self.clash)
                return False
            raise StartError(f"cannot listen on {self.cfg.listen}:{self.cfg.port}: {exc.strerror}") from None
        self.stub = stub
        self.clash = ""
        if not await self.self_probe():
            self.clash = (f"queries to {self.cfg.listen}:{self.cfg.port} do not reach ztna roaming although it "
                          f"listens there (a redirect or a shared port): another DNS proxy takes them")
            log.error("loopback clash: %s", self.clash)
            return False
        log.info("stub listening on %s:%d (udp, tcp)", self.cfg.listen, self.cfg.port)
        return True

    async def self_probe(self) -> bool:
        """Ask our own address a name only we can answer: proves the queries reach us."""
        from ztna.dnswire import ask

        name = f"{self.fwd.probe_token}.ztna-probe.invalid"
        try:
            r = await asyncio.to_thread(ask, self.cfg.listen, name, "TXT", port=self.cfg.port, timeout=1.0, tries=2)
        except (OSError, TimeoutError):
            return False
        return any(self.fwd.probe_token in str(rr.rdata) for rr in r.rr)

    def learn(self, text: str, rc: resolvconf.ResolvConf) -> tuple[dict[str, str], dict[str, str]]:
        """The interface each server and search domain came from.

        Per-interface sources (resolvconf(8) style) say it outright; otherwise
        it is the interface the kernel routes the server by right now.
        """
        sources = backend.interface_sources(self.cfg.interface_dir)
        server_if: dict[str, str] = {}
        search_if: dict[str, str] = {}
        for iface, src in sources.items():
            for s in src.nameservers:
                server_if.setdefault(s, iface)
            for d in src.search:
                search_if.setdefault(d, iface)
        for s in rc.nameservers:
            if s not in server_if:
                server_if[s] = backend.route_iface(s)
        return server_if, search_if

    def take_over(self) -> None:
        """Record the current settings, then point resolv.conf (or, with resolved, our link) at the stub."""
        if self.resolved:
            return self.take_over_link()
        text = backend.read_text(self.cfg.resolv_conf) or ""
        if resolvconf.is_ours(text):
            text = resolvconf.embedded_original(text) or ""
        rc = resolvconf.parse_untrusted(text)
        server_if, search_if = self.learn(text, rc)
        rec = record(self.mid, str(self.cfg.resolv_conf), text, rc, server_if, search_if,
                     listen=self.cfg.listen, now=time.time(), pid=os.getpid())
        ours = resolvconf.render_takeover(self.cfg.listen, text, rc)
        rec.written_fingerprint = resolvconf.fingerprint(ours)
        self.rec = rec
        self.rebuild_table()
        save_state(self.cfg.state_file, rec)
        backend.atomic_write(self.cfg.resolv_conf, ours)
        self.owning = True
        log.warning("took over %s: recorded %s%s; machine now asks %s:%d", self.cfg.resolv_conf,
                    ", ".join(f"{s.value}" + (f" ({s.iface})" if s.iface else "") for s in rec.servers) or "no servers",
                    (" search " + " ".join(d.value for d in rec.search)) if rec.search else "",
                    self.cfg.listen, self.cfg.port)

    def take_over_link(self) -> None:
        """systemd-resolved: record its servers and domains per link, then make our link the default route."""
        link = self.cfg.resolved_link
        try:
            dns_out, domain_out = resolvectl.snapshot(self.cfg.resolvectl)
        except ResolvedError as exc:
            raise backend.BackendError(str(exc)) from None
        servers = servers_by_link(dns_out, exclude_link=link)
        if not servers:
            raise backend.BackendError("systemd-resolved knows no DNS server ('resolvectl dns' names none)")
        rec = StateRecord(machine_id=self.mid, path=str(self.cfg.resolv_conf), original_text="",
                          servers=[Learned(s, i) for s, i in servers],
                          search=[Learned(d, i) for d, i in domains_by_link(domain_out, exclude_link=link)],
                          listen=self.cfg.listen, recorded_at=time.time(), pid=os.getpid(), backend=RESOLVED, link=link)
        self.rec = rec
        self.rebuild_table()
        save_state(self.cfg.state_file, rec)
        try:
            resolvectl.apply(self.cfg.resolvectl, link, [self.cfg.listen], ["~."], default_route=True)
        except ResolvedError as exc:
            self.cfg.state_file.unlink()
            raise backend.BackendError(f"systemd-resolved refused the settings of {link}: {exc}") from None
        self.owning = True
        log.warning("DNS set on %s in systemd-resolved: %s, routing domain ~., default route; nothing global "
                    "changed; recorded %s%s", link, self.cfg.listen,
                    ", ".join(s.value + (f" ({s.iface})" if s.iface else "") for s in rec.servers),
                    (" domains " + " ".join(d.value for d in rec.search)) if rec.search else "")

    def open_link(self) -> None:
        """The TUN link resolved sends our queries by; it carries the loopback stub address."""
        from ztna.tun import Tun, TunError

        try:
            self.link = Tun(self.cfg.resolved_link, [f"{self.cfg.listen}/32"], offload=False)
        except TunError as exc:
            raise StartError(f"cannot open the link for systemd-resolved: {exc}; DNS left as it is") from None

    def take_over_safely(self) -> bool:
        """take_over(), but a file we cannot read or write becomes a status, never a crash."""
        try:
            self.take_over()
        except (resolvconf.ResolvConfError, backend.BackendError, OSError) as exc:
            self.problem = f"cannot take over {self.cfg.resolv_conf}: {exc}; DNS left as it is"
            log.error("%s", self.problem)
            return False
        self.problem = ""
        return True

    def rebuild_table(self) -> None:
        rec = self.rec
        per_domain: dict[str, list[Learned]] = {}
        if rec is not None:
            for d in rec.search:
                same = [s for s in rec.servers if d.iface and s.iface == d.iface]
                if same:
                    per_domain[d.value] = same
        self.fwd.table = split.SplitDNS.build(
            recorded=list(rec.servers) if rec else [], search=list(rec.search) if rec else [],
            configured=self.cfg.internal_domains, cloud=self.cfg.cloud,
            private_reverse=self.cfg.private_reverse, per_domain=per_domain)

    # ---- while running ------------------------------------------------------
    def check_file(self) -> None:
        """Compare the file with the one we wrote; hand any foreign rewrite to the detector."""
        if not self.owning or self.rec is None or self.resolved:
            return  # with resolved there is no file of ours to watch
        try:
            raw = self.cfg.resolv_conf.read_bytes()
        except FileNotFoundError:
            raw = b""
        except OSError as exc:
            log.warning("cannot read %s: %s", self.cfg.resolv_conf, exc.strerror)
            return
        if resolvconf.fingerprint(raw.decode("utf-8", errors="replace")) == self.rec.written_fingerprint:
            return
        try:
            rc = resolvconf.parse_untrusted(raw)
            text = raw.decode()
        except resolvconf.ResolvConfError as exc:
            log.warning("%s was rewritten by someone else with a malformed file (%s)", self.cfg.resolv_conf, exc)
            rc, text = None, None
        d = self.detector.foreign_rewrite(time.time(), servers=rc.nameservers if rc else [], our_listen=self.cfg.listen)
        log.warning("foreign rewrite of %s: %s", self.cfg.resolv_conf, d.reason)
        if d.action == conflict.BACK_OFF:
            # Leave the other program's file alone; it now owns DNS.
            self.owning = False
            self.rec.written_fingerprint = None
            if rc is not None and text is not None and not resolvconf.is_ours(text):
                server_if, search_if = self.learn(text, rc)
                self.rec = record(self.mid, str(self.cfg.resolv_conf), text, rc, server_if, search_if,
                                  listen=self.cfg.listen, now=time.time(), pid=os.getpid())
                self.rebuild_table()
            save_state(self.cfg.state_file, self.rec)
        elif d.action == conflict.REASSERT:
            if rc is not None and text is not None and not resolvconf.is_ours(text) and rc.nameservers:
                self.take_over_safely()  # the new file is the network's DNS now: record it, then point at us again
            else:
                ours = resolvconf.render_takeover(self.cfg.listen, self.rec.original_text,
                                                  resolvconf.parse_untrusted(self.rec.original_text))
                self.rec.written_fingerprint = resolvconf.fingerprint(ours)
                save_state(self.cfg.state_file, self.rec)
                backend.atomic_write(self.cfg.resolv_conf, ours)
        self.refresh_status()

    async def on_netlink(self) -> None:
        try:
            await self._on_netlink()
        except Exception:  # a bug here must not stop the stub serving
            log.exception("error handling a network change")

    async def _on_netlink(self) -> None:
        try:
            change = self.ifaces.update(await asyncio.to_thread(self.up_interfaces))
        except Exception as exc:
            log.warning("cannot list interfaces: %s", exc)
            return
        if not change:
            return
        log.warning("network change: %s", change)
        d = self.detector.network_changed(time.time(), change)
        if self.stub is None or self.clash:
            if self.stub is not None:
                self.stub.close()
                self.stub = None
            if await self.bind_stub() and not self.detector.backed_off:
                self.take_over_safely()
        elif d.action == conflict.RETAKE or (self.problem and not self.owning):
            log.warning("%s", d.reason or "network changed; trying to take over again")
            self.take_over_safely()
        elif self.rec is not None and self.resolved:
            self.take_over_safely()  # resolved's servers may be other ones now: record them again
        elif self.rec is not None:
            # Same settings, new paths: learn again which interface reaches each server.
            old = self.rec
            rc = resolvconf.parse_untrusted(old.original_text)
            server_if, search_if = self.learn(old.original_text, rc)
            self.rec = record(self.mid, old.path, old.original_text, rc, server_if, search_if,
                              listen=self.cfg.listen, now=old.recorded_at, pid=os.getpid())
            self.rec.written_fingerprint = old.written_fingerprint
            save_state(self.cfg.state_file, self.rec)
            self.rebuild_table()
        self.refresh_status()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        self.preflight()
        if self.resolved:
            await asyncio.to_thread(self.open_link)
        self.ifaces.update(self.up_interfaces())
        pending: set[asyncio.Task] = set()

        def netlink_event() -> None:
            t = loop.create_task(self.on_netlink())
            pending.add(t)
            t.add_done_callback(pending.discard)

        from .netwatch import NetWatch

        watch = NetWatch(loop, netlink_event)
        watch.start()
        try:
            if await self.bind_stub():
                self.take_over_safely()
            self.refresh_status()
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.cfg.poll_interval)
                except asyncio.TimeoutError:
                    pass
                try:
                    self.check_file()
                    if self.owning:
                        self.problem = ""
                except (resolvconf.ResolvConfError, backend.BackendError, OSError) as exc:
                    self.problem = f"cannot keep {self.cfg.resolv_conf}: {exc}"
                    log.error("%s", self.problem)
                except Exception:  # a bug must cost one check, never the stub
                    log.exception("error checking %s", self.cfg.resolv_conf)
                self.refresh_status()
        finally:
            watch.stop()
            await self.shutdown()
        return 0

    def up_interfaces(self) -> set[str]:
        """The up interfaces, our own link left out (its coming and going is no network change)."""
        return backend.up_interfaces() - ({self.cfg.resolved_link} if self.resolved else set())

    async def shutdown(self) -> None:
        restored, what = restore(self.cfg, self.mid) if self.owning else (False, "nothing to restore: not owning resolv.conf")
        if not self.owning and self.cfg.state_file.exists():
            self.cfg.state_file.unlink()
        log.warning("stopping: %s", what)
        if self.stub is not None:
            self.stub.close()
        if self.link is not None:
            self.link.close()
            self.link = None
        self.owning = False
        self.tracker.update(st.Verdict("stopped", "", what), time.time())
        self.write_status()
