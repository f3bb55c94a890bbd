"""Roles, dates and the date-pairing rule: one definition each, used by every part of the plugin.

- Roles: the three sensor roles of an MDD, their labels for messages and their parameter names.
- Dates: ISO ``YYYY-MM-DD`` strings everywhere; ``day_number`` turns one into a day count, and
  ``iso_date`` / ``parse_date_text`` / ``parse_date_list`` read them from text.
- The pairing rule: ``by_distance`` / ``nearest_date`` order dates by their distance in days to a
  target day, the earlier date winning ties. Training, fusion and the baselines all choose their
  source and reference dates with it, so what a model learns is what it is applied to.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Sequence

ROLES = ("fine_ms", "dense_ms", "hs")
ROLE_LABELS = {"fine_ms": "fine MS", "dense_ms": "dense MS", "hs": "HS"}
ROLE_PARAMS = {"fine_ms": "FINE_MS", "dense_ms": "DENSE_MS", "hs": "HS"}  # Build MDD stack's keys

# Acquisition dates outside these years are taken as misread numbers (ids, times), not dates.
MIN_YEAR, MAX_YEAR = 1950, 2100

_TEXT_DATE = re.compile(r"^\s*(\d{4})[-:/_.]?(\d{2})[-:/_.]?(\d{2})(?!\d)")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class DateError(ValueError):
    """Text that should hold dates does not; the message says how to write them."""


def day_number(iso_date: str) -> int:
    """The day count (proleptic Gregorian ordinal) of an ISO date: differences are days apart."""
    return _dt.date.fromisoformat(iso_date).toordinal()


def as_date(text: str | None) -> _dt.date | None:
    """The calendar date of an ISO ``YYYY-MM-DD`` string; None for no text or text that is not one
    (labels such as a series without a date)."""
    try:
        return _dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        return None


def iso_date(year: int | str, month: int | str, day: int | str) -> str | None:
    """``YYYY-MM-DD`` for a real calendar day within MIN_YEAR..MAX_YEAR, else None."""
    try:
        d = _dt.date(int(year), int(month), int(day))
    except ValueError:
        return None
    return d.isoformat() if MIN_YEAR <= d.year <= MAX_YEAR else None


def iso_date_from_doy(year: int | str, doy: int | str) -> str | None:
    """``YYYY-MM-DD`` for a year and day of year (1..366) within MIN_YEAR..MAX_YEAR, else None."""
    try:
        d = _dt.date(int(year), 1, 1) + _dt.timedelta(days=int(doy) - 1)
    except (ValueError, OverflowError):
        return None
    return d.isoformat() if MIN_YEAR <= d.year <= MAX_YEAR and 1 <= int(doy) <= 366 else None


def parse_date_text(text: str) -> str | None:
    """ISO date from "2022-07-24", "2022:07:24 10:45:26", "20220724", "2022-07-24T10:45:26Z"..."""
    m = _TEXT_DATE.match(str(text))
    return iso_date(*m.groups()) if m else None


def parse_date_list(text: str | Sequence[str] | None) -> list[str] | None:
    """'2022-05-01, 2022-06-01;2022-07-01' (or a list) -> ['2022-05-01', ...] in the given order,
    repeats dropped; empty or None -> None (meaning: every date). DateError for anything else."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        items = [str(t).strip() for t in text]
    else:
        items = [t.strip() for t in re.split(r"[,;\s]+", str(text))]
    items = [t for t in items if t]
    if not items:
        return None
    bad = [t for t in items if not _ISO_DATE.match(t)]
    if bad:
        raise DateError(
            f"Dates must be written YYYY-MM-DD, separated by commas or semicolons; "
            f"cannot read {', '.join(repr(b) for b in bad)}."
        )
    return list(dict.fromkeys(items))  # keep order, drop repeats


def _distance_key(date: str, day: int) -> tuple:
    d = day_number(date)
    return (abs(d - day), d)


def by_distance(dates: Iterable[str], day: int) -> list[str]:
    """The ISO dates ordered by their distance in days to ``day``, nearest first; of two dates as
    far apart, the earlier comes first."""
    return sorted(dates, key=lambda d: _distance_key(d, day))


def nearest_date(dates: Iterable[str], day: int) -> str | None:
    """The date nearest to ``day`` (the earlier on a tie), or None when there is none."""
    dates = list(dates)
    return min(dates, key=lambda d: _distance_key(d, day)) if dates else None


def nearest_index(days: Sequence[int], day: int, exclude: int | None = None) -> int | None:
    """The same rule on day numbers: index into ``days`` of the one nearest ``day`` (earlier wins
    ties), skipping index ``exclude``; None when there is none."""
    best = None
    for i, d in enumerate(days):
        if exclude is not None and i == exclude:
            continue
        key = (abs(int(d) - day), int(d))
        if best is None or key < best[0]:
            best = (key, i)
    return None if best is None else best[1]
