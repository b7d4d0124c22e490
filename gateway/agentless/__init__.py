"""Agentless access (SPEC.md §2): the gateway as an authenticating HTTPS reverse proxy.

A browser without the agent reaches a published application through the
gateway's port 443, which it shares with the agents' mTLS tunnel; the
ClientHello's SNI decides which job a connection is (``route``).  Cores (no
I/O, time passed in): ``route`` (SNI), ``cookies`` (signed session and CSRF
tokens), ``users`` (scrypt password file), ``ratelimit`` (failed logins),
``auth`` (the authentication interface and its local-password backend),
``rewrite`` (request and response heads), ``exchange`` (one request's
decisions as commands).  Shell: ``server`` (TLS, sockets, upstream, streaming,
the access log).  See docs/agentless.md.
"""
