from ztna.loglimit import LogLimiter, suffix


def test_one_line_per_key_per_interval_with_the_count_held_back():
    lim = LogLimiter(interval=10)
    assert lim.allow("10.0.0.1", 0) == 0
    assert [lim.allow("10.0.0.1", t) for t in (1, 2, 9.9)] == [None, None, None]
    assert lim.allow("10.0.0.2", 3) == 0  # another source has its own budget
    assert lim.allow("10.0.0.1", 10) == 3  # the next line says how many were suppressed
    assert lim.allow("10.0.0.1", 25) == 0
    assert suffix(3) == " (3 similar lines suppressed)" and suffix(0) == ""


def test_many_sources_do_not_grow_the_table_without_end():
    lim = LogLimiter(interval=10, max_keys=100)
    for i in range(10_000):
        lim.allow(i, 0)
    assert len(lim._keys) <= 100
    assert lim.allow(10_001, 20) == 0
