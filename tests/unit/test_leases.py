import ipaddress
import random

import pytest

from agent.leases import LeasePool, PoolExhausted


def addr(lease):
    return lease.addr_text


def test_one_address_per_name_and_reserved_never_leased():
    pool = LeasePool()
    a = pool.lease("app.mycompany.net", 0)
    assert addr(a) == "100.64.0.3"  # .0 network, .1 adapter, .2 DNS stub
    assert pool.lease("app.mycompany.net", 1) is a
    assert addr(pool.lease("hr.mycompany.net", 1)) == "100.64.0.4"
    assert pool.get(a.addr) is a


def test_idle_leases_are_reclaimed_busy_ones_kept():
    pool = LeasePool(idle_timeout=100, grace=10)
    a = pool.lease("a.example", 0)
    b = pool.lease("b.example", 0)
    pool.note_packet(b, ("tcp", 1), 50)
    gone = pool.expire(150, flow_idle=1000)
    assert [l.fqdn for l in gone] == ["a.example"]
    assert pool.get(b.addr) is b and pool.get(a.addr) is None


def test_flow_end_and_flow_idle():
    pool = LeasePool(idle_timeout=10, grace=1)
    a = pool.lease("a.example", 0)
    assert pool.note_packet(a, "k", 1) is True
    assert pool.note_packet(a, "k", 2) is False
    pool.expire(100, flow_idle=50)
    assert pool.get(a.addr) is None  # flow silent for 98 s, lease idle: reclaimed


def test_exhaustion_takes_lru_idle_never_busy():
    pool = LeasePool("100.64.0.0/29", reserved=["100.64.0.1", "100.64.0.2"], idle_timeout=1000, grace=5)
    names = [f"n{i}.example" for i in range(pool.capacity())]
    leases = [pool.lease(n, t) for t, n in enumerate(names)]
    for l in leases[1:]:
        pool.note_packet(l, "flow", 100)
    new = pool.lease("late.example", 100)  # n0 is the only idle one
    assert new.addr == leases[0].addr and "n0.example" not in pool.by_name
    with pytest.raises(PoolExhausted, match="in use"):
        pool.lease("later.example", 100)


def test_just_answered_lease_is_not_stolen():
    pool = LeasePool("100.64.0.0/30", reserved=["100.64.0.1"], grace=30)
    pool.lease("first.example", 0)
    with pytest.raises(PoolExhausted):
        pool.lease("second.example", 10)  # first.example was answered 10 s ago; its client may not have connected yet
    assert pool.lease("second.example", 31).fqdn == "second.example"


class NaivePool:
    """Reference: scan every address in order, reuse freed ones, no cleverness."""

    def __init__(self, net, reserved, idle, grace):
        self.all = [a for a in ipaddress.IPv4Network(net) if str(a) not in reserved][1:-1]
        self.leases = {}  # name -> [addr, last_used, flows]
        self.idle, self.grace = idle, grace

    def lease(self, name, now):
        if name in self.leases:
            self.leases[name][1] = now
            return self.leases[name][0]
        used = {v[0] for v in self.leases.values()}
        free = [a for a in self.all if a not in used]
        if free:
            a = free[0]
        else:
            idle = [(v[1], n) for n, v in self.leases.items() if not v[2] and now - v[1] >= self.grace]
            if not idle:
                raise PoolExhausted
            a = self.leases.pop(min(idle)[1])[0]
        self.leases[name] = [a, now, set()]
        return a


def test_agrees_with_naive_model_on_which_names_hold_addresses():
    rng = random.Random(1234)
    pool = LeasePool("100.64.0.0/28", reserved=["100.64.0.1", "100.64.0.2"], idle_timeout=10**9, grace=3)
    naive = NaivePool("100.64.0.0/28", ["100.64.0.1", "100.64.0.2"], 10**9, 3)
    names = [f"h{i}.example" for i in range(30)]
    for now in range(400):
        n = rng.choice(names)
        try:
            got = pool.lease(n, now)
            ok = True
        except PoolExhausted:
            ok = False
        try:
            naive.lease(n, now)
            assert ok, "clever pool refused what the naive one granted"
        except PoolExhausted:
            assert not ok
            continue
        if rng.random() < 0.3:
            pool.note_packet(got, "f", now)
            naive.leases[n][2].add("f")
            naive.leases[n][1] = now
        assert set(pool.by_name) == set(naive.leases)
        assert len({l.addr for l in pool.by_name.values()}) == len(pool.by_name)
