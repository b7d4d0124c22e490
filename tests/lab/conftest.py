"""Lab fixtures: each test module builds its own sealed lab and removes it."""


import pytest

from netns import builder
from netns.topology import prefix


@pytest.fixture(autouse=True, scope="session")
def _no_leftover_namespaces():
    """Refuse to start on top of another lab, and check that we left none behind."""
    before = {n for n in builder.existing() if n.startswith(prefix())}
    if before:
        pytest.exit(f"lab namespaces already exist: {sorted(before)}; run 'ztna lab down' first", returncode=3)
    yield
    after = {n for n in builder.existing() if n.startswith(prefix())}
    assert not after, f"tests left lab namespaces behind: {sorted(after)}"


def pytest_terminal_summary(terminalreporter):
    """The hostile campaign's table (tests/lab/legit.py), when any hostile case ran."""
    import legit  # tests/lab is on sys.path for its own modules

    text = legit.table()
    if text:
        terminalreporter.write_sep("-", "hostile campaign: case, attempts, result, legitimate failures")
        terminalreporter.write_line(text)
