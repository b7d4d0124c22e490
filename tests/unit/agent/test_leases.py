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


def test_wildcard_cap_reclaims_the_oldest_idle_of_that_wildcard():
    pool = LeasePool(max_per_wildcard=3, grace=5)
    w = "*.apps.example"
    exact = pool.lease("app.example", 0)
    a, b, c = (pool.lease(f"{n}.apps.example", t, group=w) for t, n in ((1, "a"), (2, "b"), (3, "c")))
    pool.note_packet(a, "flow", 50)  # a is busy, b the oldest idle one
    d = pool.lease("d.apps.example", 60, group=w)
    assert d.addr == b.addr and "b.apps.example" not in pool.by_name
    assert pool.per_group[w] == 3 and pool.get(exact.addr) is exact  # exact names are not the wildcard's
    events, reclaimed = pool.drain()
    assert reclaimed == [b] and "max_leases_per_wildcard" in events[0] and "b.apps.example" in events[0]
    assert pool.drain() == ([], [])
    assert c.fqdn in pool.by_name


def test_wildcard_cap_with_every_lease_busy_gives_no_lease():
    pool = LeasePool(max_per_wildcard=2, grace=30)
    w = "*.apps.example"
    pool.lease("a.apps.example", 0, group=w)
    pool.lease("b.apps.example", 1, group=w)
    with pytest.raises(PoolExhausted, match="max_leases_per_wildcard"):
        pool.lease("c.apps.example", 2, group=w)  # both answered just now: their clients may connect yet
    assert "every one busy" in pool.drain()[0][0]
    assert pool.lease("other.apps2.example", 2, group="*.apps2.example")  # another wildcard has its own cap


def test_total_cap_reclaims_the_oldest_idle_lease():
    pool = LeasePool(max_leases=3, grace=5)
    leases = [pool.lease(f"n{i}.example", i) for i in range(3)]
    new = pool.lease("late.example", 100)
    assert new.addr == leases[0].addr and len(pool) == 3
    assert pool.drain()[1] == [leases[0]]


def test_caps_against_a_naive_model():
    rng = random.Random(19)
    pool = LeasePool(max_leases=12, max_per_wildcard=5, grace=0, idle_timeout=1e9)
    for t in range(3000):
        g = rng.choice(["*.a.example", "*.b.example", None])
        name = f"n{rng.randrange(40)}.{g[2:] if g else 'exact.example'}"
        try:
            pool.lease(name, float(t), group=g)
        except PoolExhausted:
            pass
        pool.drain()
        assert len(pool) <= 12 and len(pool.by_addr) == len(pool)
        for grp in ("*.a.example", "*.b.example"):
            assert sum(1 for l in pool.by_name.values() if l.group == grp) == pool.per_group[grp] <= 5
