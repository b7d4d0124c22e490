import pytest

from ztna import resolved as R

DNS_OUT = """Global: 198.51.100.53
Link 2 (eth0): 10.0.0.53 fe80::1%2 10.0.0.54#dns.example
Link 5 (ztna0): 100.64.0.2
Link 1 (lo):
"""


@pytest.mark.parametrize("target,yes", [
    ("../run/systemd/resolve/stub-resolv.conf", True),
    ("/run/systemd/resolve/stub-resolv.conf", True),
    ("/run/systemd/resolve/resolv.conf", True),
    ("/run/ztna-lab/x/run/systemd/resolve/stub-resolv.conf", True),
    ("../run/resolvconf/resolv.conf", False),
    ("/run/systemd/resolve/stub-resolv.conf.bak", False),
    ("resolv.conf", False),
    (None, False),
    ("", False),
])
def test_which_links_mean_resolved_manages_the_file(target, yes):
    assert R.points_at_resolved(target) is yes


def test_auto_uses_resolved_only_when_the_file_points_at_it():
    assert R.choose("auto", "/etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf", None).backend == R.RESOLVED
    assert R.choose("auto", "/etc/resolv.conf", None, None).backend == R.RESOLVCONF
    assert R.choose("auto", "/etc/resolv.conf", "../run/resolvconf/resolv.conf", None).backend == R.RESOLVCONF
    assert R.choose("resolved", "/etc/resolv.conf", None, None).backend == R.RESOLVED
    assert R.choose("resolvconf", "/etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf", "down").backend == R.RESOLVCONF


def test_resolved_managing_the_file_but_not_answering_is_an_error_not_a_file_write():
    with pytest.raises(R.ResolvedError, match="resolvectl does not answer .*timed out.*DNS left as it is"):
        R.choose("auto", "/etc/resolv.conf", "../run/systemd/resolve/stub-resolv.conf", "timed out")
    with pytest.raises(R.ResolvedError, match="dns backend = resolved"):
        R.choose("resolved", "/etc/resolv.conf", None, "not found")
    with pytest.raises(R.ResolvedError, match="not one of"):
        R.choose("dnsmasq", "/etc/resolv.conf", None, None)


def test_routing_domains_from_app_patterns():
    assert R.routing_domains(["*.mycompany.net", "app.corp.example", "hr.mycompany.net", "*.MyCompany.net."]) == \
        ["~mycompany.net", "~app.corp.example"]
    assert R.routing_domains(["*.a.example", "*.b.a.example", "c.example"]) == ["~a.example", "~c.example"]


def test_commands_touch_only_the_link():
    cmds = R.apply_commands("resolvectl", "ztna0", ["100.64.0.2"], ["~mycompany.net"])
    assert cmds == [["resolvectl", "dns", "ztna0", "100.64.0.2"],
                    ["resolvectl", "domain", "ztna0", "~mycompany.net"],
                    ["resolvectl", "default-route", "ztna0", "no"]]
    assert all(c[2] == "ztna0" for c in cmds)
    assert R.apply_commands("rc", "l", ["1.2.3.4"], [], default_route=True)[2] == ["rc", "default-route", "l", "yes"]
    assert R.revert_command("resolvectl", "ztna0") == ["resolvectl", "revert", "ztna0"]
    with pytest.raises(R.ResolvedError):
        R.apply_commands("resolvectl", "ztna0", [], ["~x"])


def test_servers_of_resolvectl_dns_output_skip_our_link_loopback_and_ipv6():
    assert R.servers_of(DNS_OUT, exclude_link="ztna0") == ["198.51.100.53", "10.0.0.53", "10.0.0.54"]
    assert R.servers_of("Global: 127.0.0.53\n", exclude_link="ztna0") == []
    assert R.servers_of("garbage\n\x00Link x (eth0): 1.2.3.4\n", exclude_link="ztna0") == []


def test_revert_of_a_link_that_is_gone_counts_as_done():
    assert R.revert_gone("Failed to resolve interface \"ztna0\": No such device")
    assert not R.revert_gone("Failed to revert interface configuration: Connection timed out")


def test_servers_and_domains_by_link_for_the_roaming_client():
    assert R.servers_by_link(DNS_OUT, exclude_link="ztna-dns") == [
        ("198.51.100.53", ""), ("10.0.0.53", "eth0"), ("10.0.0.54", "eth0"), ("100.64.0.2", "ztna0")]
    out = "Global: example.org\nLink 2 (eth0): corp.example ~vpn.example\nLink 7 (ztna-dns): ~.\nLink 9 (tun0): ~.\n"
    assert R.domains_by_link(out, exclude_link="ztna-dns") == [("example.org", ""), ("corp.example", "eth0"),
                                                               ("vpn.example", "eth0")]
