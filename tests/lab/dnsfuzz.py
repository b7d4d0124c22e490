"""Send DNS queries to a server over UDP or TCP and report what came back; run inside a lab namespace.

    python dnsfuzz.py udp|tcp SERVER CASES.json

CASES.json is a list of hex strings, one DNS message each.  Prints one JSON
line: for each case the reply's RCODE name, ``none`` (no reply in time) or,
over TCP, ``closed`` (the server closed without a reply).
"""

import json
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

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
