"""ztna: a Linux-native zero-trust access and secure-edge system.

This package holds what every role shares: the click root, PKI, configuration
loading, DNS wire helpers and logging.  The roles live in ``agent``, ``gateway``
and ``netns`` (the lab).
"""

__version__ = "0.1.0"
