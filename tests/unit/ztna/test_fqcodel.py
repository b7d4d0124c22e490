import math

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from ztna.fqcodel import FqCodel, ecn_mark, ip_checksum

VNET = bytes(10)


def pkt(sport: int, *, size: int = 1000, tos: int = 0, dport: int = 5201, udp: bool = False) -> bytes:
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport)
    raw = bytes(IP(src="100.64.0.1", dst="100.64.0.3", tos=tos) / l4 / Raw(b"x" * size))
    return VNET + raw


def sport_of(p) -> int:
    return IP(bytes(p[10:]))[TCP].sport


def test_a_sparse_flow_jumps_a_bulk_flows_backlog():
    q = FqCodel(salt=1)
    for _ in range(200):
        q.enqueue(pkt(1000), 0.0)
    assert q.bucket(pkt(1000)) != q.bucket(pkt(2000))
    assert sport_of(q.dequeue(0.0)) == 1000  # the bulk flow is being served
    q.enqueue(pkt(2000), 0.0)  # one packet of an interactive flow
    # It is a new flow: served as soon as the bulk flow's current turn (one quantum) ends,
    # not after its 199 packets.
    assert 2000 in [sport_of(q.dequeue(0.0)) for _ in range(2)]


def test_two_bulk_flows_share_by_bytes_not_by_packets():
    q = FqCodel(salt=1, limit_packets=100000, limit_bytes=10**9)
    for _ in range(300):
        q.enqueue(pkt(1000, size=1400), 0.0)
    for _ in range(900):
        q.enqueue(pkt(2000, size=400), 0.0)
    sent = {1000: 0, 2000: 0}
    for _ in range(400):
        p = q.dequeue(0.0)
        sent[sport_of(p)] += len(p)
    assert abs(sent[1000] - sent[2000]) <= 2 * 1514 + 1500


def test_codel_drops_on_its_schedule_only_after_a_standing_queue_of_one_interval():
    q = FqCodel(salt=1, ecn=False, limit_packets=100000, limit_bytes=10**9)
    for _ in range(2000):
        q.enqueue(pkt(1000), 0.0)
    drop_times = []
    now = 0.0
    while now < 0.6:
        now = round(now + 0.0005, 6)
        before = q.drops
        assert q.dequeue(now) is not None
        drop_times += [now] * (q.drops - before)
    # Sojourn passes target (5 ms) at t=5 ms; the first drop waits one interval (100 ms) more.
    assert 0.105 <= drop_times[0] <= 0.1055
    # Then the control law: each next drop interval/sqrt(count) after the previous one.
    expected = [drop_times[0]]
    while True:
        nxt = expected[-1] + 0.1 / math.sqrt(len(expected))
        if nxt > 0.6:
            break
        expected.append(nxt)
    assert len(drop_times) == len(expected)
    for got, want in zip(drop_times, expected):
        assert want <= got < want + 0.0005 + 1e-9


def test_no_drop_while_the_queue_drains_within_target():
    q = FqCodel(salt=1, ecn=False)
    now = 0.0
    for _ in range(5000):
        now += 0.001
        q.enqueue(pkt(1000), now)
        q.enqueue(pkt(1000), now)
        q.dequeue(now + 0.004)
        q.dequeue(now + 0.004)
    assert q.drops == 0 and len(q) == 0


def test_ecn_capable_packets_are_marked_instead_of_dropped():
    q = FqCodel(salt=1, limit_packets=100000, limit_bytes=10**9)
    n = 1500
    for _ in range(n):
        q.enqueue(pkt(1000, tos=0x02), 0.0)  # ECT(0)
    out = []
    now = 0.0
    while len(q):
        now += 0.0005
        out.append(q.dequeue(now))
    assert q.drops == 0 and q.marks > 3
    assert len(out) == n  # nothing lost
    marked = [p for p in out if p[11] & 3 == 3]
    assert len(marked) == q.marks
    for p in marked:
        assert IP(bytes(p[10:])).tos == 0x03
        assert ip_checksum(p[10:30]) == 0  # the header checksum still verifies


def test_packets_not_ecn_capable_are_dropped_even_with_ecn_on():
    q = FqCodel(salt=1, limit_packets=100000, limit_bytes=10**9)
    for _ in range(1500):
        q.enqueue(pkt(1000), 0.0)
    now = 0.0
    while len(q):
        now += 0.0005
        q.dequeue(now)
    assert q.marks == 0 and q.drops > 3


def test_ecn_mark_fixes_the_checksum_for_every_tos():
    for tos in range(256):
        raw = bytearray(pkt(7, tos=tos, udp=True))
        ok = ecn_mark(raw, 10)
        assert ok == bool(tos & 3)
        parsed = IP(bytes(raw[10:]))
        assert parsed.tos == (tos | 3 if tos & 3 else tos)
        fresh = IP(bytes(raw[10:]))
        del fresh.chksum
        assert IP(bytes(fresh)).chksum == parsed.chksum


def test_memory_is_bounded_whatever_the_senders_do():
    q = FqCodel(salt=1, limit_bytes=200_000, limit_packets=150, buckets=64)
    for i in range(20000):
        q.enqueue(pkt(1000 + i % 5000, size=900 + i % 500), 0.0)
        assert q.bytes <= 200_000 and len(q) <= 150
    assert len(q.flows) <= 64
    assert q.overlimit > 0
    assert q.bytes == sum(f.bytes for f in q.flows.values())
    assert len(q) == sum(len(f.q) for f in q.flows.values())


def test_a_flood_loses_its_own_packets_not_the_sparse_flows():
    q = FqCodel(salt=1, limit_bytes=100_000)
    q.enqueue(pkt(2000), 0.0)
    for _ in range(1000):
        q.enqueue(pkt(1000), 0.0)
    got = []
    while len(q):
        got.append(sport_of(q.dequeue(0.0)))
    assert got.count(2000) == 1
    assert q.overlimit > 0


def test_not_ipv4_goes_to_one_flow_and_is_still_served():
    q = FqCodel(salt=1)
    q.enqueue(VNET + b"\x60" + bytes(40), 0.0)
    assert q.bucket(VNET + b"\x60" + bytes(40)) == 0
    assert q.dequeue(0.0) is not None and q.dequeue(0.0) is None


def test_dequeue_bytes_stops_near_its_budget():
    q = FqCodel(salt=1)
    for i in range(50):
        q.enqueue(pkt(1000 + i % 3), 0.0)
    batch = q.dequeue_bytes(10_000, 0.0)
    assert 10_000 <= sum(map(len, batch)) < 10_000 + 1100
    assert len(q) == 50 - len(batch)
