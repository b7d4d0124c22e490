"""The endpoint: ZTNA agent and roaming DNS client."""
