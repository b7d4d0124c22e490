import pytest

from ztna.names import BadName, PatternSet, normalize, normalize_pattern


def test_normalize_case_dot_idna():
    assert normalize("App.MyCompany.NET.") == "app.mycompany.net"
    assert normalize("bücher.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize("bad", ["", ".", "a..b", "x" * 64 + ".com", "a." * 130 + "com"])
def test_bad_names(bad):
    with pytest.raises(BadName):
        normalize(bad)


def test_wildcard_only_as_first_label():
    assert normalize_pattern("*.Corp.Example") == "*.corp.example"
    with pytest.raises(BadName):
        normalize_pattern("a*.corp.example")


def test_pattern_set_exact_and_suffix_on_whole_labels():
    ps = PatternSet(["app.mycompany.net", "*.apps.mycompany.net"])
    assert ps.match("app.mycompany.net") == "app.mycompany.net"
    assert ps.match("x.y.apps.mycompany.net") == "*.apps.mycompany.net"
    assert ps.match("apps.mycompany.net") is None  # *.domain does not cover domain itself
    assert ps.match("evilapps.mycompany.net") is None
    assert ps.match("www.example.com") is None
