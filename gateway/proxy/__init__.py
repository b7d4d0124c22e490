"""HTTPS forward proxy (SPEC.md 5): pure cores (policy, http1, machine, certs) and the I/O shell (server, nft)."""
