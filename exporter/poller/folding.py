"""Folding a day's videos into the cardinality cap, with label values safe to export.

The daemon and backfill fold alike (:func:`fold_with_limits`): the top videos by bytes are
kept, the rest and the filtered ones summed in ``__other__``, so the totals stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Container
from typing import TYPE_CHECKING

from ..config.defaults import DEFAULT_MAX_LABEL_LENGTH
from ..scaleengine.parsing import cut_url, without_surrogates
from ..store import OTHER

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import LimitsConfig

Row = tuple[str, int, int]  # (video_url, bytes, requests)


def label_value(url: str, max_bytes: int = DEFAULT_MAX_LABEL_LENGTH) -> str:
    """``url`` made a safe label value; the same object when it already is one.

    Valid UTF-8 whatever the API sent: each lone UTF-16 surrogate (valid JSON, not encodable)
    becomes U+FFFD. At most ``max_bytes`` bytes of UTF-8: a longer value is cut on a
    character boundary and ``~`` plus the first 16 hex digits of the SHA-256 of the whole
    URL are appended, so distinct long URLs stay distinct series: the client's
    :func:`~exporter.scaleengine.parsing.cut_url`, the one cut, so a URL the client already
    cut is left as it is.
    """
    return without_surrogates(cut_url(url, max_bytes))


def fold_videos(
    videos: dict[str, tuple[int, int]],
    max_videos: int,
    include: re.Pattern[str] | None = None,
    exclude: re.Pattern[str] | None = None,
    *,
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    folded: Container[str] | None = None,
) -> tuple[Row, ...]:
    """Top ``max_videos`` videos by bytes; the rest and the filtered ones summed in __other__.

    The filters see the URL as the API sent it: ``folded``, when given, is their verdict
    already made by the client on each URL as sent (``UsageResult.folded``: the keys of
    ``videos`` may be cut labels by then), and ``include``/``exclude`` are not applied again.
    What is kept is labelled by :func:`label_value` (valid UTF-8, at most
    ``max_label_length`` bytes), rows whose labels coincide summed, so the totals stay exact.
    """
    if folded is not None:
        include = exclude = None
    judged = folded if folded is not None else ()
    kept, renamed, other = _sort_out(videos, judged, include, exclude, max_label_length)
    if renamed:
        kept = _merge_renamed(kept, renamed)
    return _cap(kept, max_videos, other)


def _sort_out(
    videos: dict[str, tuple[int, int]],
    judged: Container[str],
    include: re.Pattern[str] | None,
    exclude: re.Pattern[str] | None,
    max_label_length: int,
) -> tuple[list[Row], dict[str, tuple[int, int]], tuple[int, int] | None]:
    """(rows kept as they are, sums by new label of the rows relabelled, the filtered rows'
    sum or None when none was filtered)."""
    other_b = other_r = 0
    filtered = False
    kept: list[Row] = []
    renamed: dict[str, tuple[int, int]] = {}
    for url, (nbytes, nrequests) in videos.items():
        if (
            url == OTHER
            or url in judged
            or (include is not None and not include.search(url))
            or (exclude is not None and exclude.search(url))
        ):
            other_b += nbytes
            other_r += nrequests
            filtered = True
            continue
        # fast path: ASCII (an O(1) flag in CPython) and short is a label as it is
        if url.isascii() and len(url) <= max_label_length:
            kept.append((url, nbytes, nrequests))
            continue
        label = label_value(url, max_label_length)
        if label is url:
            kept.append((url, nbytes, nrequests))
        else:
            _add(renamed, label, nbytes, nrequests)
    return kept, renamed, (other_b, other_r) if filtered else None


def _merge_renamed(kept: list[Row], renamed: dict[str, tuple[int, int]]) -> list[Row]:
    """The relabelled rows added to the kept ones, rows of the same label summed."""
    merged = {u: (b, r) for u, b, r in kept}
    for label, (nbytes, nrequests) in renamed.items():
        _add(merged, label, nbytes, nrequests)
    return [(u, b, r) for u, (b, r) in merged.items()]


def _add(sums: dict[str, tuple[int, int]], label: str, nbytes: int, nrequests: int) -> None:
    old = sums.get(label)
    sums[label] = (nbytes, nrequests) if old is None else (old[0] + nbytes, old[1] + nrequests)


def _cap(kept: list[Row], max_videos: int, other: tuple[int, int] | None) -> tuple[Row, ...]:
    """Bytes descending (ties by URL), the top ``max_videos``; the rest and ``other`` summed
    in __other__, which is there only when something was folded."""
    kept.sort(key=lambda row: (-row[1], row[0]))
    if len(kept) > max_videos:
        other_b, other_r = other or (0, 0)
        for _, nbytes, nrequests in kept[max_videos:]:
            other_b += nbytes
            other_r += nrequests
        del kept[max_videos:]
        other = (other_b, other_r)
    if other is not None:
        kept.append((OTHER, *other))
    return tuple(kept)


def fold_with_limits(
    videos: dict[str, tuple[int, int]],
    limits: LimitsConfig,
    folded: Container[str] | None = None,
) -> tuple[Row, ...]:
    """fold_videos with the config's limits: the daemon and backfill fold alike. ``folded``:
    the client's verdict (``UsageResult.folded``) when it was built with these limits."""
    return fold_videos(
        videos,
        limits.max_videos_per_app,
        limits.include,
        limits.exclude,
        max_label_length=limits.max_label_length,
        folded=folded,
    )
