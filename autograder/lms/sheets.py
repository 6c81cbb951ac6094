"""CSV files a spreadsheet cannot execute: every CSV the course writes for people to open goes through write_csv.

Names, answers and file names come from students; a spreadsheet (Excel, LibreOffice, Google Sheets) runs a cell
that starts with =, +, - or @ as a formula, and tab or carriage return can smuggle one in. As OWASP's CSV
injection guidance advises (and Canvas and Moodle do in their own exports), such a cell gets a leading apostrophe,
which spreadsheets show as text; a plain number (-1.5) is left as it is, so grades stay numbers.
"""
import csv
import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value):
    """`value` as a cell no spreadsheet runs: text that starts like a formula gets a leading apostrophe."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_START) and not NUMBER.fullmatch(text):
        return "'" + text
    return text


def write_csv(path, header, rows):
    """Write `header` and `rows` (lists of values) to the CSV file `path`, every cell through safe_cell."""
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([safe_cell(value) for value in header])
        writer.writerows([safe_cell(value) for value in row] for row in rows)
    return path


def read_csv(path):
    """The rows of the CSV file `path` as dicts ([] when there is no such file)."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))
