"""Rate plan CSV: parse with every bad row reported by line number, and export that parses back the same."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Protocol, TextIO

from credits.errors import ValidationError
from credits.money import CURRENCY_EXPONENTS, MAX_AMOUNT, check_currency, format_micro, parse
from credits.rating.engine import MAX_INCREMENT_S, Rate

HEADER = (
    "prefix",
    "destination",
    "rate_per_minute",
    "connect_fee",
    "first_increment_s",
    "next_increment_s",
    "effective_from",
)
#: How often, in data rows, parse_rates reports progress unless told otherwise.
PROGRESS_EVERY = 1000

#: progress(rows_done, rows_total): rows_total counts the file's lines, so it is exact unless a quoted
#: destination spans lines; the last call always has rows_done == rows_total.
ProgressCallback = Callable[[int, int], None]


# csv.reader's type is private to typeshed; this is the part used here.
class _Reader(Protocol):
    line_num: int

    def __next__(self) -> list[str]: ...

    def __iter__(self) -> Iterator[list[str]]: ...


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_UINT = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True, slots=True)
class RowError:
    """What is wrong with one line of the file (line 1 is the header)."""

    line: int
    problems: tuple[str, ...]

    def __str__(self) -> str:
        return f"line {self.line}: " + "; ".join(self.problems)


class RateCsvError(ValidationError):
    """The rate CSV has bad rows; `errors` lists every one, in file order, and nothing was imported."""

    code = "invalid_rate_csv"
    title = "Invalid rate file"

    def __init__(self, errors: list[RowError]) -> None:
        self.errors = errors
        noun = "row" if len(errors) == 1 else "rows"
        super().__init__(f"{len(errors)} bad {noun} in the rate file:\n" + "\n".join(map(str, errors)))


def _money(text: str, name: str, problems: list[str]) -> int:
    # Rates are priced below the currency's minor unit (0.0123/min), so any of the 6 micro decimals go.
    try:
        value = parse(text, allow_negative=True)
    except ValidationError:
        problems.append(f"{name} {text[:40]!r} is not a decimal amount with at most 6 decimals")
        return 0
    if value < 0:
        problems.append(f"{name} must not be negative")
    elif value > MAX_AMOUNT:
        problems.append(f"{name} is larger than the maximum of {format_micro(MAX_AMOUNT)}")
    return value


def _seconds(text: str, name: str, problems: list[str]) -> int:
    if not _UINT.fullmatch(text):
        problems.append(f"{name} {text[:40]!r} is not a whole number of seconds")
        return 1
    value = int(text)
    if not 1 <= value <= MAX_INCREMENT_S:
        problems.append(f"{name} must be between 1 and {MAX_INCREMENT_S} seconds")
    return value


def _date(text: str, problems: list[str]) -> date | None:
    if not text:
        return None
    # date.fromisoformat also takes "20270101" and week dates; the file format is YYYY-MM-DD only.
    if _ISO_DATE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    problems.append(f"effective_from {text[:40]!r} is not a date (YYYY-MM-DD)")
    return None


def _parse_row(fields: list[str]) -> tuple[Rate | None, list[str]]:
    if len(fields) != len(HEADER):
        return None, [f"expected {len(HEADER)} columns, found {len(fields)}"]
    prefix, destination, rpm_text, fee_text, first_text, next_text, eff_text = (f.strip() for f in fields)
    problems: list[str] = []
    if not prefix.isascii() or not prefix.isdigit():
        problems.append(f"prefix {prefix[:40]!r} must be digits only")
    rpm = _money(rpm_text, "rate_per_minute", problems)
    fee = _money(fee_text, "connect_fee", problems)
    first = _seconds(first_text, "first_increment_s", problems)
    nxt = _seconds(next_text, "next_increment_s", problems)
    eff = _date(eff_text, problems)
    if problems:
        return None, problems
    try:
        # The engine's own checks: an empty destination, a prefix too long.
        return Rate(prefix, destination, rpm, fee, first, nxt, eff), []
    except ValidationError as exc:
        return None, [exc.message]


def _read_text(source: str | TextIO) -> str:
    text = source if isinstance(source, str) else source.read()
    # Spreadsheets save UTF-8 with a byte-order mark; it is not part of the header.
    return text.removeprefix("\ufeff")


def _check_header(reader: Iterator[list[str]]) -> None:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise RateCsvError([RowError(1, (f"unreadable header: {exc}",))]) from None
    if header is None:
        raise RateCsvError([RowError(1, ("the file is empty; expected the header " + ",".join(HEADER),))])
    if tuple(h.strip() for h in header) != HEADER:
        raise RateCsvError([RowError(1, ("the header must be exactly " + ",".join(HEADER),))])


def _records(reader: _Reader, errors: list[RowError]) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line number, fields) for each non-blank record; append a CSV syntax error to `errors`."""
    while True:
        line = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # A broken quote swallows the rest of the file: report it and stop reading.
            errors.append(RowError(line, (f"unreadable CSV: {exc}",)))
            return
        if fields and (len(fields) > 1 or fields[0].strip()):
            yield line, fields


def parse_rates(
    source: str | TextIO,
    currency: str,
    *,
    progress: ProgressCallback | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> list[Rate]:
    """Parse a rate plan CSV (the text, or an open text file) priced in `currency`; return its rates in file order.

    The header must be exactly `prefix,destination,rate_per_minute,connect_fee,first_increment_s,
    next_increment_s,effective_from`. Money is a decimal string in currency units with up to 6 decimals
    (0 allowed; sub-cent rates such as 0.0123 allowed); increments are whole seconds >= 1; effective_from is
    YYYY-MM-DD or empty. Blank lines are skipped.

    Every row is checked. If any is bad, raises RateCsvError listing each bad row with its line number
    (line 1 is the header) and returns nothing: non-digit prefix, negative or malformed amount, zero or
    malformed increment, bad date, wrong number of columns, a prefix repeated with the same effective_from.
    A bad or missing header is reported alone, as the rows cannot be read without it. Raises
    ValidationError for an unknown currency. `progress(rows_done, rows_total)` is called every
    `progress_every` data rows and once at the end.
    """
    check_currency(currency)
    if progress_every < 1:
        raise ValidationError("progress_every must be at least 1", field="progress_every")
    text = _read_text(source)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    lines_total = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    rows_total = max(lines_total - 1, 0)

    _check_header(reader)
    rates: list[Rate] = []
    errors: list[RowError] = []
    first_seen: dict[tuple[str, date | None], int] = {}
    rows_done = 0
    reported: tuple[int, int] | None = None
    for line, fields in _records(reader, errors):
        rows_done += 1
        rate, problems = _parse_row(fields)
        if rate is not None:
            earlier = first_seen.setdefault((rate.prefix, rate.effective_from), line)
            if earlier != line:
                when = rate.effective_from.isoformat() if rate.effective_from else "(empty)"
                problems = [f"duplicate of line {earlier}: prefix {rate.prefix} with effective_from {when}"]
            else:
                rates.append(rate)
        if problems:
            errors.append(RowError(line, tuple(problems)))
        if progress is not None and rows_done % progress_every == 0:
            reported = (rows_done, max(rows_total, rows_done))
            progress(*reported)
    if progress is not None and reported != (rows_done, rows_done):
        progress(rows_done, rows_done)
    if errors:
        raise RateCsvError(errors)
    return rates


def _format_amount(value: int, currency: str) -> str:
    # Shortest exact form, but never fewer decimals than the currency's minor unit: 0.0123, 0.10, 5.
    text = format_micro(value)
    keep = CURRENCY_EXPONENTS[currency]
    whole, frac = text.split(".")
    frac = frac.rstrip("0").ljust(keep, "0")
    return f"{whole}.{frac}" if frac else whole


def export_rates(rates: Iterable[Rate], currency: str) -> str:
    """Return `rates` as rate plan CSV text in `currency`, sorted by prefix then effective_from.

    The output parses back with parse_rates to the same rates. Raises ValidationError for an unknown currency.
    """
    check_currency(currency)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for r in sorted(rates, key=lambda r: (r.prefix, r.effective_from or date.min)):
        writer.writerow(
            (
                r.prefix,
                r.destination,
                _format_amount(r.rate_per_minute, currency),
                _format_amount(r.connect_fee, currency),
                r.first_increment_s,
                r.next_increment_s,
                r.effective_from.isoformat() if r.effective_from else "",
            )
        )
    return out.getvalue()
