"""The TOML line locator used to place validation errors."""

from __future__ import annotations

from sipswitch.config.toml_lines import key_lines, locate

TEXT = """\
top = 1
[sip]
listen = [
  "a = 1",
  "b",
]
"quoted.key" = 2
sub.inner = 3
text = '''
fake = 1
'''
after = 4
[ "db" . url ]
x = { y = 1 }
"""


def test_tables_keys_and_dotted_keys() -> None:
    lines = key_lines(TEXT)
    assert lines[("top",)] == 1
    assert lines[("sip",)] == 2
    assert lines[("sip", "listen")] == 3
    assert lines[("sip", "quoted.key")] == 7
    assert lines[("sip", "sub", "inner")] == 8
    assert lines[("sip", "text")] == 9
    assert lines[("sip", "after")] == 12
    assert lines[("db", "url")] == 13
    assert lines[("db", "url", "x")] == 14


def test_values_spanning_lines_hide_their_content() -> None:
    lines = key_lines(TEXT)
    assert ("sip", "a") not in lines
    assert ("sip", "fake") not in lines


def test_locate_falls_back_to_the_nearest_written_prefix() -> None:
    lines = key_lines(TEXT)
    assert locate(lines, ("sip", "listen", 1)) == 3
    assert locate(lines, ("sip", "missing")) == 2
    assert locate(lines, ("db", "url", "x", "y")) == 14
    assert locate(lines, ("nothing",)) == 1
