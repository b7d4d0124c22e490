"""DNS security resolver: per-identity policy, the record-type answer table of
SPEC.md §4, forwarding with a TTL cache, CNAME inspection, tunnelling
detection, a block page, and a JSON-lines query log.

Pure cores (no I/O, time passed in): ``names``, ``policy``, ``answers``,
``tunnel``, ``cache``, ``ratelimit``, ``wire``, ``engine``, ``stats``.
Shells: ``server`` (UDP/TCP), ``upstream`` (forwarding), ``blockpage``
(HTTP/HTTPS), ``querylog``, ``cli``.
"""
