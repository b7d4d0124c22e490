"""Malformed DNS queries: the cases (``cases``), and a program that sends them and reports what came back.

    python dnsfuzz.py udp|tcp SERVER CASES.json

CASES.json is a list of hex strings, one DNS message each.  Prints one JSON
line: for each case the reply's RCODE name, ``none`` (no reply in time) or,
over TCP, ``closed`` (the server closed without a reply).  The lab tests build
the cases with ``cases()`` (imported: tests/lab is on their path) and run the
program inside a lab namespace.
"""

import json
import random
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

def query(name_wire: bytes, qid: int = 0x1234, qtype: int = 1, qdcount: int = 1) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, qdcount, 0, 0, 0) + name_wire + struct.pack("!HH", qtype, 1)


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def cases(name: str, *, seed: int = 19, mutations: int = 150) -> dict[str, list[bytes]]:
    """Malformed queries built from a valid one for ``name``, by kind; bounded and repeatable (``seed``).

    Every kind but ``mutated`` is malformed for certain; a mutation may still
    be a valid query (or read as a response), so only most of those are.
    """
    rng = random.Random(seed)
    valid = query(wire_name(name))
    chain = b"".join(bytes([49]) + b"b" * 49 for _ in range(5))  # 250 octets of labels
    return {
        # Five 63-octet labels: 320 octets.  Then 250 octets and a pointer back to them: over 255 by the pointer.
        "over-long name (labels)": [query(b"".join(bytes([63]) + b"a" * 63 for _ in range(5)) + b"\0", qid=0x0a0a)],
        "over-long name (pointer)": [query(chain + b"\0", qid=0x4321, qdcount=2) + chain + b"\xc0\x0c"
                                     + struct.pack("!HH", 1, 1)],
        "label over 63": [query(bytes([64]) + b"b" * 64 + b"\x07example\0", qid=0x0a0b)],
        "pointer loop": [query(b"\xc0\x0c", qid=0x0b0b), query(b"\x01a\xc0\x0c", qid=0x0b0c),
                         query(b"\x03www\xc0\x12\x03abc\xc0\x0c", qid=0x0b0d),  # a loop of two
                         query(b"\xc0\xff", qid=0x0b0e)],  # a pointer past the end
        "truncated": [valid[:n] for n in range(12, len(valid))],
        "mutated": [_mutate(rng, valid) for _ in range(mutations)],
    }


def _mutate(rng: random.Random, valid: bytes) -> bytes:
    m = bytearray(valid)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            m[rng.randrange(12, len(m))] = rng.randrange(256)  # the question, not the header: mostly malformed
    elif kind == 1:
        i = rng.randrange(12, len(m))
        m[i:i] = rng.randbytes(rng.randint(1, 8))
    elif kind == 2:
        i = rng.randrange(12, len(m))
        del m[i:i + rng.randint(1, 4)]
    else:
        m[4:12] = struct.pack("!HHHH", *(rng.choice((0, 2, 255, 65535)) for _ in range(4)))  # counts that lie
    return bytes(m)


RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def rcode(reply: bytes) -> str:
    return RCODES.get(reply[3] & 0xF, str(reply[3] & 0xF)) if len(reply) >= 4 else "short"


def udp_one(server, msg, wait=2.5):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(msg, (server, 53))
        try:
            return rcode(s.recvfrom(65535)[0])
        except (socket.timeout, TimeoutError):
            return "none"
        except OSError as exc:
            return f"error {exc.errno}"


def tcp_one(server, msg, wait=2.5):
    try:
        with socket.create_connection((server, 53), timeout=wait) as s:
            s.sendall(struct.pack("!H", len(msg)) + msg)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(65535)
                if not chunk:
                    return "closed"
                buf += chunk
            return rcode(buf[2:])
    except (socket.timeout, TimeoutError):
        return "none"
    except OSError as exc:
        return f"error {exc.errno}"


MALFORMED = ("over-long name (labels)", "over-long name (pointer)", "label over 63", "pointer loop", "truncated")


def by_kind(flat: list, results: list) -> dict[str, list[str]]:
    """The program's results grouped by case kind (``flat``: the (kind, message) pairs in the order sent)."""
    out: dict = {}
    for (kind, _), got in zip(flat, results):
        out.setdefault(kind, []).append(got)
    return out


def check_refusals(kinds: dict, *, mutated_formerr: int) -> str:
    """Assert every certainly-malformed kind got FORMERR and more than ``mutated_formerr`` of the mutations
    did; return the tally of all answers, for the campaign's table."""
    for kind in MALFORMED:
        assert set(kinds[kind]) == {"FORMERR"}, (kind, kinds[kind])
    assert kinds["mutated"].count("FORMERR") > mutated_formerr, kinds["mutated"]
    tally: dict = {}
    for got in (g for gs in kinds.values() for g in gs):
        tally[got] = tally.get(got, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(tally.items()))


def main():
    proto, server, path = sys.argv[1], sys.argv[2], sys.argv[3]
    cases = [bytes.fromhex(h) for h in json.load(open(path))]
    one = udp_one if proto == "udp" else tcp_one
    t0 = time.monotonic()
    # A few at a time: a forwarded case may wait on the upstream for its time-out.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda m: one(server, m), cases))
    print(json.dumps({"results": results, "seconds": round(time.monotonic() - t0, 1)}))


if __name__ == "__main__":
    main()
