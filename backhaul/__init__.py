"""Backhauling through sites (SPEC §7): the site router that dials the PoP (docs/backhaul.md)."""
