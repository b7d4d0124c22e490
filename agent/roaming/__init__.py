"""Roaming DNS client (SPEC.md §6): loopback takeover, split DNS, restore, status.

Pure cores (no I/O, time passed in): ``ztna.resolvconf`` (parse/render, shared with
the agent's takeover), ``state``
(what was recorded and whether it may be put back), ``split`` (which server a
name goes to), ``conflict`` (the rewrite-race detector), ``status`` (the
status model).  Shells: ``stub`` (loopback UDP/TCP server and forwarder),
``backend`` (resolv.conf files, systemd-resolved detection), ``netwatch``
(netlink interface events), ``daemon`` (wires them together), ``cli``.
"""
