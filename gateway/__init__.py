"""The network side: ZTNA gateway, DNS security resolver, HTTPS forward proxy."""
