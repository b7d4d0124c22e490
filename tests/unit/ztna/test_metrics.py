"""ztna.metrics: families rendered by a scrape-time collector, the listen setting (no root)."""

import pytest

from ztna.config import ConfigError
from ztna.metrics import COUNTER, GAUGE, Exporter, Family, parse_listen


def test_families_are_read_at_scrape_time():
    counts = {"n": 0}
    ex = Exporter(lambda: [Family("ztna_x", "X things", COUNTER, ("kind",), [(("a",), counts["n"])]),
                           Family("ztna_open", "Open now", GAUGE, (), [((), 3)])])
    assert 'ztna_x_total{kind="a"} 0.0' in ex.render()
    counts["n"] = 5
    text = ex.render()
    assert 'ztna_x_total{kind="a"} 5.0' in text and "ztna_open 3.0" in text and "# TYPE ztna_x_total counter" in text
    assert "process_cpu" not in text  # a registry of its own


@pytest.mark.parametrize("text, want", [("127.0.0.1:9153", ("127.0.0.1", 9153)), ("[::1]:9100", ("::1", 9100))])
def test_parse_listen(text, want):
    assert parse_listen(text, "[metrics] listen") == want


@pytest.mark.parametrize("text", ["9153", "localhost:9153", "127.0.0.1:0", "127.0.0.1:x"])
def test_parse_listen_refuses(text):
    with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
        parse_listen(text, "[metrics] listen")
