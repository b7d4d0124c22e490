import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="lab tests need root (they build network namespaces): sudo scripts/test.sh")
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(skip)
