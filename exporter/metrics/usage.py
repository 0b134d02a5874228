"""The stored (per-poll) usage families: their help texts, and each app's lines rendered as
text fragments (gauges only, which read the same in the text format and in OpenMetrics)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..appkey import AppKey
from ..store import AppUsage

_POLLED = "Polled from ScaleEngine usage.vse every poll.interval, not fetched at scrape time."


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    help: str
    per_video: bool

    def header(self) -> bytes:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n".encode()


def usage_families(timezone: str) -> tuple[Family, ...]:
    """The stored (per-poll) gauge families, in exposition order."""
    return (
        *_video_families(timezone),
        *_app_day_families(timezone),
        *_app_month_families(timezone),
        *_budget_families(),
    )


def _today(timezone: str) -> str:
    return f"today (the current day in {timezone})"


def _video_families(timezone: str) -> tuple[Family, ...]:
    today = _today(timezone)
    return (
        Family(
            "scaleengine_vse_day_bytes",
            f"Bytes delivered {today} per video or stream; videos past "
            f"limits.max_videos_per_app or filtered out are summed in video_url=__other__. "
            + _POLLED,
            True,
        ),
        Family(
            "scaleengine_vse_day_requests",
            f"Play, pause and stop commands received {today} per video or stream. " + _POLLED,
            True,
        ),
    )


def _app_day_families(timezone: str) -> tuple[Family, ...]:
    today = _today(timezone)
    return (
        Family(
            "scaleengine_vse_app_day_bytes",
            f"Bytes delivered {today} by the app, summed over all its videos. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_day_requests",
            f"Play, pause and stop commands received {today} by the app. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_day_videos",
            f"Distinct videos or streams with usage {today} in the app. " + _POLLED,
            False,
        ),
    )


def _app_month_families(timezone: str) -> tuple[Family, ...]:
    """The month to date, yesterday's late total and the day's end."""
    return (
        Family(
            "scaleengine_vse_app_month_bytes",
            f"Bytes delivered by the app in the current month to date ({timezone}). " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_month_requests",
            f"Commands received by the app in the current month to date ({timezone}). " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_previous_day_bytes",
            f"Latest total of bytes delivered yesterday ({timezone}) by the app; yesterday is "
            "polled for late data for poll.late_data_window after midnight. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_day_end_timestamp_seconds",
            f"Unix time at which the app's current day ({timezone}) ends.",
            False,
        ),
    )


def _budget_families() -> tuple[Family, ...]:
    return (
        Family(
            "scaleengine_vse_app_day_bytes_budget",
            "Daily bandwidth budget of the app in bytes (apps[].daily_bytes_budget).",
            False,
        ),
        Family(
            "scaleengine_vse_app_month_bytes_budget",
            "Monthly bandwidth budget of the app in bytes (apps[].monthly_bytes_budget).",
            False,
        ),
    )


def escape_label(value: str) -> str:
    """Escape a label value for the text formats (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _format_float(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render_app(usage: AppUsage) -> dict[str, bytes]:
    """The app's lines of every stored usage family (without headers), by family name."""
    labels = app_labels(usage.key)
    prefix_b = "scaleengine_vse_day_bytes{" + labels + ',video_url="'
    prefix_r = "scaleengine_vse_day_requests{" + labels + ',video_url="'
    bytes_lines = []
    request_lines = []
    for url, nbytes, nrequests in usage.videos:
        label = escape_label(url)
        bytes_lines.append(f'{prefix_b}{label}"}} {nbytes}\n')
        request_lines.append(f'{prefix_r}{label}"}} {nrequests}\n')
    out = {
        "scaleengine_vse_day_bytes": "".join(bytes_lines).encode(),
        "scaleengine_vse_day_requests": "".join(request_lines).encode(),
    }
    app_values: list[tuple[str, int | float | None]] = [
        ("scaleengine_vse_app_day_bytes", usage.day_bytes),
        ("scaleengine_vse_app_day_requests", usage.day_requests),
        ("scaleengine_vse_app_day_videos", usage.day_videos),
        ("scaleengine_vse_app_month_bytes", usage.month_bytes),
        ("scaleengine_vse_app_month_requests", usage.month_requests),
        ("scaleengine_vse_app_previous_day_bytes", usage.previous_day_bytes),
        ("scaleengine_vse_app_day_end_timestamp_seconds", usage.day_end),
    ]
    for name, value in app_values:
        if value is not None:
            out[name] = f"{name}{{{labels}}} {_format_float(value)}\n".encode()
    return out


def app_labels(key: AppKey) -> str:
    """The labels of one app's series, account first: ``account="..",app=".."``."""
    return f'account="{escape_label(key.account)}",app="{escape_label(key.app)}"'


def render_budgets(
    budgets: Mapping[AppKey, tuple[int | None, int | None]],
) -> dict[str, bytes]:
    day = []
    month = []
    for key, (daily, monthly) in budgets.items():
        labels = app_labels(key)
        if daily is not None:
            day.append(f"scaleengine_vse_app_day_bytes_budget{{{labels}}} {daily}\n")
        if monthly is not None:
            month.append(f"scaleengine_vse_app_month_bytes_budget{{{labels}}} {monthly}\n")
    return {
        "scaleengine_vse_app_day_bytes_budget": "".join(day).encode(),
        "scaleengine_vse_app_month_bytes_budget": "".join(month).encode(),
    }
