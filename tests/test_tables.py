"""The one plain-text table printer (core.console.text_table) that every human table uses."""

from onnxprune.core.console import text_table


def test_columns_take_the_widest_cell_and_a_footer_sits_under_a_second_rule():
    text = text_table(["a", "long head"], [["wide cell", 1], ["x", 22]], footer=["total", 23])
    assert text.split("\n") == [
        "a          long head",
        "---------  ---------",
        "wide cell  1        ",
        "x          22       ",
        "---------  ---------",
        "total      23       ",
    ]


def test_without_headers_only_the_rows_are_printed_each_with_the_indent():
    assert text_table(None, [["ab", "c"], ["d", "efg"]], indent="  ") == "  ab  c  \n  d   efg"


def test_a_footer_wider_than_every_row_widens_its_column():
    assert text_table(["n"], [["1"]], footer=["1000"]).split("\n")[0] == "n   "
