import pytest

from netns.topology import Topology, TopologyError


def small():
    t = Topology("t")
    t.host("a").addr("eth0", "10.0.0.1/24").route("default", "10.0.0.2")
    t.host("b", forward=True).addr("eth0", "10.0.0.2/24")
    t.link("a", "eth0", "b", "eth0")
    return t


def test_plan_renders_ip_commands(monkeypatch):
    monkeypatch.setenv("ZTNA_NS_PREFIX", "zt-")
    assert small().plan() == [
        "ip netns add zt-a",
        "ip netns add zt-b",
        "ip -n zt-a link add eth0 type veth peer name eth0 netns zt-b",
        "ip -n zt-a addr add 10.0.0.1/24 dev eth0",
        "ip -n zt-a route add default via 10.0.0.2",
        "ip -n zt-b addr add 10.0.0.2/24 dev eth0",
        "ip netns exec zt-b sysctl -w net.ipv4.ip_forward=1",
    ]


def test_switch_ports_live_in_the_switch_namespace(monkeypatch):
    monkeypatch.setenv("ZTNA_NS_PREFIX", "zt-")
    t = Topology("t")
    t.host("x").addr("eth0", "192.168.1.1/24")
    t.host("y").addr("eth0", "192.168.1.2/24")
    t.switch("lan", ("x", "eth0"), ("y", "eth0"))
    plan = t.plan()
    assert "ip -n zt-x link add eth0 type veth peer name x netns zt-lan" in plan
    assert "ip -n zt-lan link set y master br0 up" in plan


@pytest.mark.parametrize("mutate,msg", [
    (lambda t: t.link("a", "eth7", "nowhere", "eth0"), "unknown host"),
    (lambda t: t.link("a", "eth0", "b", "eth1"), "used by two links"),
    (lambda t: t.hosts["a"].addr("eth9", "10.1.1.1/24"), "no link creates"),
    (lambda t: t.link("a", "averyveryverylongname", "b", "eth5"), "longer than 15"),
])
def test_inconsistent_specs_are_refused(mutate, msg):
    t = small()
    mutate(t)
    with pytest.raises(TopologyError, match=msg):
        t.validate()


def test_bad_address_is_refused():
    with pytest.raises(ValueError):
        Topology("t").host("a").addr("eth0", "10.0.0.300/24")


def test_capture_names_split_at_the_first_dash_and_host_names_have_none():
    import pytest

    from netns.flow import where
    from netns.topology import Topology, TopologyError

    assert where("/x/branch-ztna-site0.pcap") == ("branch", "ztna-site0")
    assert where("pop-eth0.pcap") == ("pop", "eth0")
    with pytest.raises(TopologyError, match="may not contain '-'"):
        Topology("t").host("branch-1")
