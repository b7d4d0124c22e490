"""The cloud PoP (SPEC §3): agents and outbound-only gateway connectors meet here (docs/pop.md)."""
