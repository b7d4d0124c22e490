"""gateway.dnsfilter.server: the shell's start-up errors (no root)."""

import socket

import pytest

from gateway.dnsfilter.config import from_dict
from gateway.dnsfilter.server import Resolver
from ztna.config import ConfigError

from .test_engine import DOC


def test_a_taken_port_is_a_clear_error():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = Resolver(from_dict({**DOC, "metrics": {"listen": f"127.0.0.1:{port}"}}))
        with pytest.raises(ConfigError, match=rf"\[metrics\] listen = '127.0.0.1:{port}': cannot listen there"):
            r.start_metrics()
        r.qlog.close()
    finally:
        taken.close()
