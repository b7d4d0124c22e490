"""Scenario registry: every module in this package may define ``SCENARIOS``,
a list of :class:`netns.scenario.Scenario` subclasses."""

from __future__ import annotations

import importlib
import pkgutil

from ..scenario import Scenario


def all_scenarios() -> dict[str, type[Scenario]]:
    found: dict[str, type[Scenario]] = {}
    for mod in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for cls in getattr(module, "SCENARIOS", []):
            found[cls.name] = cls
    return dict(sorted(found.items()))


def get(name: str) -> Scenario:
    table = all_scenarios()
    if name not in table:
        raise KeyError(f"no scenario {name!r}; known: {', '.join(table) or 'none'}")
    return table[name]()
