"""The calendar rules: which acquisition stands for a date, and how a role is brought to a date it
was not acquired on. One place, used by training, fusion and the baselines alike, so a model meets
at fusion time exactly the pairings it was trained on.

- Pairing: real sensors never image on the same day. A fine MS image and an HS image are taken as
  "the same date" when they are at most ``max_days`` apart (``MAX_DAYS_APART`` by default); the
  nearest wins, the earlier on a tie (``core.vocabulary.nearest_date``). ``fine_for`` says which
  fine MS stands for a date: its own, or for an HS date the paired one.
- Interpolation in time: the dense MS at any date is, per pixel, the linear interpolation of that
  pixel's valid dense MS on the nearest dates before and after (the nearest one where only one side
  has data): ``fill_in_time``. ``interpolation_note`` says in words how far the sources were.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .vocabulary import day_number, nearest_date

# Fine MS and HS acquisitions this many days apart or less are paired as one date. Ten days keeps
# sensors a revisit apart (Sentinel-2 5 d, Landsat 8 d, GF-6 4 d) together, while a month of crop
# growth is not taken as "no change".
MAX_DAYS_APART = 10


class CalendarError(ValueError):
    """A calendar option that cannot be used; the message says what to give instead."""


def check_max_days(max_days: float) -> float:
    if not max_days >= 0:
        raise CalendarError(f"MAX_DAYS_APART must be 0 or more days, got {max_days}.")
    return float(max_days)


def paired_date(dates: Sequence[str], date: str, max_days: float = MAX_DAYS_APART) -> str | None:
    """The date of ``dates`` that stands for ``date``: the nearest at most ``max_days`` away (the
    earlier on a tie), else None."""
    day = day_number(date)
    best = nearest_date(dates, day)
    return best if best is not None and abs(day_number(best) - day) <= max_days else None


def fine_for(
    fine_dates: Sequence[str], date: str, hs_dates: Sequence[str], max_days: float = MAX_DAYS_APART
) -> str | None:
    """The fine MS image that stands for ``date``: the one of that day; for an HS date, the nearest
    within ``max_days`` (the pairing). Other dates without a fine MS of their own get none: their
    fine MS is predicted from the nearest fine MS dates and the dense MS change."""
    if date in fine_dates:
        return date
    return paired_date(fine_dates, date, max_days) if date in hs_dates else None


def pairings(dates: Sequence[str], targets: Sequence[str], max_days: float = MAX_DAYS_APART) -> dict:
    """{target: paired date or None} for every target date."""
    return {t: paired_date(dates, t, max_days) for t in targets}


def days_apart(a: str, b: str) -> int:
    return abs(day_number(a) - day_number(b))


def bracketing_dates(dates: Sequence[str], date: str) -> tuple[str | None, str | None]:
    """The latest of ``dates`` on or before ``date`` and the earliest on or after it."""
    day = day_number(date)
    before = [d for d in dates if day_number(d) <= day]
    after = [d for d in dates if day_number(d) >= day]
    return (max(before, key=day_number) if before else None, min(after, key=day_number) if after else None)


def _apart(date: str, other: str) -> str:
    n = days_apart(date, other)
    return "that day" if n == 0 else f"{n} days {'before' if day_number(other) < day_number(date) else 'after'}"


def interpolation_note(dates: Sequence[str], date: str) -> str:
    """How a role acquired on ``dates`` is brought to ``date``, in words for the log."""
    if date in dates:
        return f"{date}: acquired that day (gaps filled in time per pixel)"
    before, after = bracketing_dates(dates, date)
    if before and after:
        return f"{date}: interpolated in time between {before} ({_apart(date, before)}) and {after} ({_apart(date, after)})"
    side = before or after
    if side is None:
        return f"{date}: no acquisition at all"
    return f"{date}: taken from {side} ({_apart(date, side)}), the only side"


def temporal_sources(fine_dates: Sequence[str], date: str, own: str | None, bracketing: bool = True) -> tuple:
    """(q, q2): the fine MS dates the fine MS of ``date`` is predicted from when ``own`` (the one
    standing for it, ``fine_for``) is left out: q the nearest other date, q2 the nearest on the
    other side of ``date`` (None without one, or without ``bracketing``)."""
    day = day_number(date)
    sources = [d for d in fine_dates if d != own]
    q = nearest_date(sources, day)
    other = [d for d in sources if q and (day_number(d) - day) * (day_number(q) - day) < 0]
    q2 = nearest_date(other, day) if bracketing and other else None
    return q, q2


def stand_ins(fine_dates: Sequence[str], date: str, source: str, own: str | None = None) -> list:
    """The fine MS dates (not ``own``) that stand in for ``source`` where its fine MS has a gap (fusion's
    ``FusionPredictor._fill_sources``): those beyond it on the same side of ``date``, nearest first."""
    day, s = day_number(date), day_number(source) - day_number(date)
    beyond = [d for d in fine_dates if d != own and (day_number(d) - day) * s > 0 and abs(day_number(d) - day) > abs(s)]
    return sorted(beyond, key=lambda d: abs(day_number(d) - day))


def _share(valid: dict | None, role: str, date: str) -> float | None:
    """The share of ``role``'s image of ``date`` that is valid, against the role's clearest date."""
    share = (valid or {}).get(role, {}).get(date)
    return None if share is None or share >= 0.99 else float(share)


def date_sources(
    fine_dates: Sequence[str],
    dense_dates: Sequence[str],
    hs_dates: Sequence[str],
    date: str,
    max_days: float = MAX_DAYS_APART,
    valid: dict | None = None,
) -> dict:
    """What the fused image of ``date`` rests on, as fusion chooses it: {"fine_ms", "dense_ms",
    "hs": a text each, "warning": a text or None}. ``valid``: {role: {date: its image's valid pixels
    over those of the role's clearest date}} (clouds and gaps), where known. The warning is for a date
    with no fine MS of its own and either no dense MS image within ``max_days`` (nothing observed near
    that day: its image is an interpolation in time of the images around it) or a dense MS image of
    that day with less than half the valid pixels of the clearest (most of it from other dates)."""
    day = day_number(date)
    own = fine_for(fine_dates, date, hs_dates, max_days)
    if own is not None:
        fine = "observed that day" if own == date else f"observed on {own} ({_apart(date, own)}), paired with the HS"
        share = _share(valid, "fine_ms", own)
        if share is not None:
            fine += f", {100 * share:.0f} % of the clearest date's valid pixels (the rest predicted in time)"
    else:
        q, q2 = temporal_sources(fine_dates, date, own)
        if q is None:
            fine = "none: from the dense MS alone"
        else:
            sides = " and ".join(f"{d} ({_apart(date, d)})" for d in (q, q2) if d is not None)
            fine = f"predicted from {sides} with the dense MS's change"
            if any(stand_ins(fine_dates, date, s) for s in (q, q2) if s is not None):  # predictor.SOURCE_FILL
                fine += ", under a cloud of one from the next clear date beyond it"
    dense = interpolation_note(dense_dates, date).split(": ", 1)[1]
    dense_share = _share(valid, "dense_ms", date) if date in dense_dates else None
    if dense_share is not None:
        dense = f"acquired that day, {100 * dense_share:.0f} % of the clearest date's valid pixels (gaps filled)"
    nearest_hs = nearest_date(hs_dates, day)
    if nearest_hs is None:
        hs = "none"
    elif nearest_hs == date:
        hs = "observed that day"
    else:
        hs = f"from {nearest_hs} ({_apart(date, nearest_hs)}), the nearest HS date"
    warning = None
    nearest_dense = nearest_date(dense_dates, day)
    if own is None and (nearest_dense is None or days_apart(nearest_dense, date) > max_days):
        far = "none at all" if nearest_dense is None else f"the nearest is {days_apart(nearest_dense, date)} days away"
        warning = (
            f"{date}: no fine MS and no dense MS image within {max_days:g} days ({far}): its fused image is "
            "interpolated in time from the images around it and cannot show what changed in between."
        )
    elif own is None and dense_share is not None and dense_share < 0.5:
        warning = (
            f"{date}: no fine MS of its own, and its dense MS image has {100 * dense_share:.0f} % of the clearest "
            "date's valid pixels (clouds or gaps): most of its fused image comes from the other dates."
        )
    return {"fine_ms": fine, "dense_ms": dense, "hs": hs, "warning": warning}


def fill_in_time(values: np.ndarray, valid: np.ndarray, days: Sequence[int], day: int) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the value at `day` interpolated linearly in time between the nearest valid dates
    before and after it (a valid observation at `day` itself is kept as it is).

    values (T, B, H, W) physical, valid (T, H, W) bool, days (T,) day numbers, day: the target's.
    Returns (values (B, H, W), valid (H, W)); NaN where the pixel is valid on no date."""
    days = np.asarray(days, dtype=np.float64)
    sides = []
    for order, on_side in (
        (np.argsort(-days, kind="stable"), days <= day),
        (np.argsort(days, kind="stable"), days >= day),
    ):
        v = np.full(values.shape[1:], np.nan, np.float32)
        found = np.full(values.shape[2:], np.nan)  # the day of the value taken, NaN until one is found
        missing = np.ones(values.shape[2:], bool)
        for i in order:
            if not on_side[i]:
                continue
            take = valid[i] & missing
            if take.all():  # a clear date first: the whole image, without a mask's indexing
                v[...] = values[i]
                found[...] = days[i]
                missing[...] = False
            else:
                v[:, take] = values[i][:, take]
                found[take] = days[i]
                missing &= ~take
            if not missing.any():  # every pixel found: the dates farther away would add nothing
                break
        sides.append((v, found))
    (vb, db), (va, da) = sides
    has_b, has_a = np.isfinite(db), np.isfinite(da)
    both = has_b & has_a & (da > db)
    w = np.where(both, (day - np.where(both, db, 0.0)) / np.where(both, da - db, 1.0), 0.0).astype(np.float32)
    out = np.where(has_b, vb, va)
    out = np.where(both, vb + w * (va - vb), out)
    return out.astype(np.float32), has_b | has_a
