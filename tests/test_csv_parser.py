"""CSV rules of the brief's section 2, on the parser that both validation and fan-out use."""

from __future__ import annotations

import io

import pytest

from services.ingest.csv_parser import CsvReader, HeaderError, Limits, ProductRow, RowProblem, url_problem

pytestmark = pytest.mark.pure  # no server of the stack: `make test-fast` runs it

LIMITS = Limits(max_rows=100, max_urls_per_row=3, max_url_length=200)


def parse(text: str, limits: Limits = LIMITS) -> tuple[list[ProductRow], list[RowProblem]]:
    reader = CsvReader(io.StringIO(text, newline=""), limits)
    items = list(reader)
    return [i for i in items if isinstance(i, ProductRow)], [i for i in items if isinstance(i, RowProblem)]


def test_columns_match_ignoring_case_order_and_whitespace_and_extras_are_kept():
    rows, problems = parse(
        " input image URLS ,Extra , serial number,PRODUCT NAME\n"
        '"http://a.example/1.jpg, https://a.example/2.png",x,S1,Shoe\n'
    )
    assert problems == []
    assert rows == [ProductRow(1, "S1", "Shoe", ["http://a.example/1.jpg", "https://a.example/2.png"], {"Extra": "x"})]


def test_crlf_quotes_and_url_whitespace():
    text = (
        "Serial Number,Product Name,Input Image Urls\r\n"
        '1,"Shoe, red","  http://h.example/a.jpg ,http://h.example/b.jpg  "\r\n'
    )
    rows, problems = parse(text)
    assert problems == []
    assert rows[0].product_name == "Shoe, red"
    assert rows[0].urls == ["http://h.example/a.jpg", "http://h.example/b.jpg"]


def test_missing_required_column_is_named():
    with pytest.raises(HeaderError) as info:
        parse("Serial Number,Input Image Urls\n1,http://h.example/a.jpg\n")
    assert [p.column for p in info.value.problems] == ["Product Name"]


def test_empty_file_is_refused():
    with pytest.raises(HeaderError, match="empty"):
        parse("")


SERIAL, NAME, URLS = "Serial Number", "Product Name", "Input Image Urls"


@pytest.mark.parametrize(
    ("row", "column", "fragment"),
    [
        (",Mug,http://img.example/a.jpg", SERIAL, "serial number is empty"),
        ("   ,Mug,http://img.example/a.jpg", SERIAL, "serial number is empty"),
        ("S1,,http://img.example/a.jpg", NAME, "product name is empty"),
        ("S1,  ,http://img.example/a.jpg", NAME, "product name is empty"),
        ("S1,Mug,", URLS, "at least one image URL"),
        ('S1,Mug," , ,"', URLS, "at least one image URL"),
        ("S1,Mug,javascript:alert(1)", URLS, "scheme 'javascript'"),
        ("S1,Mug,ftp://img.example/a.jpg", URLS, "scheme 'ftp'"),
        ("S1,Mug,data:image/png;base64", URLS, "scheme 'data'"),
        ("S1,Mug,/images/a.jpg", URLS, "not an absolute http(s) URL"),
        ("S1,Mug,img.example/a.jpg", URLS, "not an absolute http(s) URL"),
        ("S1,Mug,http://", URLS, "no host"),
        ("S1,Mug,http:///a.jpg", URLS, "no host"),
        ("S1,Mug,http://img.example:99999/a.jpg", URLS, "malformed URL"),
        ("S1,Mug,http://[::1/a.jpg", URLS, "malformed URL"),
        ("S1,Mug,http://img.example:0/a.jpg", URLS, "invalid port"),
        ('S1,Mug,"http://img.example/a b.jpg"', URLS, "whitespace"),
        (
            'S1,Mug,"http://h.example/1.jpg,http://h.example/2.jpg,http://h.example/3.jpg,http://h.example/4.jpg"',
            URLS,
            "4 URLs; at most 3 per row",
        ),
    ],
)
def test_row_rules(row: str, column: str, fragment: str):
    """One problem, on the bad row (row 2, after a good one), naming its column. The API reports these problems
    as they come (tests/test_api_validation.py checks how it lists them); the rules themselves are checked here."""
    rows, problems = parse(f"Serial Number,Product Name,Input Image Urls\nOK-1,Good,http://img.example/ok.jpg\n{row}\n")
    assert [r.serial_number for r in rows] == ["OK-1"]
    assert len(problems) == 1, problems
    assert (problems[0].row, problems[0].column) == (2, column)
    assert fragment in problems[0].message


def test_duplicate_serial_and_ragged_rows_report_every_problem_with_row_numbers():
    text = (
        "Serial Number,Product Name,Input Image Urls\n"
        "1,A,http://h.example/a.jpg\n"
        "1,B,http://h.example/b.jpg\n"
        "2,C\n"
        "3,D,http://h.example/d.jpg\n"
    )
    rows, problems = parse(text)
    assert [r.serial_number for r in rows] == ["1", "3"]
    assert [(p.row, p.column) for p in problems] == [(2, "Serial Number"), (3, None)]
    assert "appears more than once" in problems[0].message
    assert "cells" in problems[1].message


def test_row_limit_stops_reading():
    text = "Serial Number,Product Name,Input Image Urls\n" + "".join(
        f"{i},P{i},http://h.example/{i}.jpg\n" for i in range(1, 6)
    )
    rows, problems = parse(text, Limits(max_rows=3, max_urls_per_row=3, max_url_length=200))
    assert len(rows) == 3
    assert problems[-1].row == 4 and "more than 3 rows" in problems[-1].message


def test_blank_lines_are_skipped_and_rows_keep_input_order():
    text = "Serial Number,Product Name,Input Image Urls\n\n" + "".join(
        f"{i},P{i},http://h.example/{i}.jpg\n\n" for i in (5, 3, 9)
    )
    rows, problems = parse(text)
    assert problems == []
    assert [(r.row, r.serial_number) for r in rows] == [(1, "5"), (2, "3"), (3, "9")]


@pytest.mark.parametrize("url", ["http://example.com/a.jpg", "https://cdn.example.com:8443/x/y.png?q=1"])
def test_good_urls_pass(url: str):
    assert url_problem(url, 2048) is None


def test_too_long_url():
    assert "longer" in (url_problem("http://h.example/" + "a" * 300, 100) or "")
