"""The landing page "/": one small server-rendered page, every server text HTML-escaped.

Per app: how its last poll went, today's bytes against the daily budget, the month to date
against the monthly budget (percent), the poll interval and the age of its data; a banner in
demo mode. No JavaScript; it reads the same store the scrape path serves from.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..appkey import AppKey
    from ..store import AppStatus, AppUsage

Budgets = tuple[int | None, int | None]  # daily, monthly bytes


@dataclass(frozen=True)
class LandingView:
    """What the page shows, gathered by the web app (app.py's WebApp.landing_view)."""

    status: Mapping[AppKey, AppStatus]  # every app, by (account, app)
    usage: Mapping[AppKey, AppUsage]  # the apps with data
    telemetry_path: str
    version: str
    budgets: Mapping[AppKey, Budgets] = field(default_factory=dict)
    interval: float | None = None  # poll.interval, seconds
    timezone: str | None = None  # poll.timezone: where "today" is
    demo: bool = False  # the built-in simulator stands in for the API
    # app.list's verdict (store.View.listed): app -> closest listed name when not listed
    listed: Mapping[AppKey, str | None] = field(default_factory=dict)
    # the apps polled because app.list names them (discovery), not because the config does
    discovered: frozenset[AppKey] = frozenset()


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222}
h1{margin:0 0 .2em}
.sub{color:#555;margin:0 0 1em}
.demo{background:#fff3cd;border:1px solid #e0b000;padding:.6em 1em;margin:0 0 1em;
border-radius:4px}
table{border-collapse:collapse}
td,th{padding:.35em .8em;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4;white-space:nowrap}
td:first-child{white-space:nowrap;font-weight:bold}
td.num{text-align:right;white-space:nowrap}
.ok{color:#1a7f37}.fail{color:#b42318}.wait{color:#777}
.bar{background:#eee;width:8em;height:.6em;border-radius:3px;margin-top:.25em}
.bar div{height:100%;border-radius:3px;background:#1a7f37}
.bar .warn{background:#e0a000}.bar .over{background:#b42318}
.small{color:#666;font-size:.85em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def human_bytes(n: float | None) -> str:
    """Decimal units, as the budgets are written (500GB = 500e9 bytes)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(value) < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def human_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def _budget_cell(used: int | None, budget: int | None) -> str:
    if used is None:
        return '<td class="num">-</td>'
    text = _e(human_bytes(used))
    if budget is None:
        return f'<td class="num">{text}<div class="small">no budget</div></td>'
    percent = 100.0 * used / budget if budget else 0.0
    level = "over" if percent >= 100 else "warn" if percent >= 80 else ""
    width = min(100.0, percent)
    return (
        f'<td class="num">{text}<div class="small">{percent:.1f}% of {_e(human_bytes(budget))}'
        f'</div><div class="bar"><div class="{level}" style="width:{width:.1f}%"></div></div></td>'
    )


def _status_cell(st: AppStatus) -> str:
    if not st.polled:
        return '<td class="wait">not polled yet</td>'
    if st.up:
        return '<td class="ok">ok</td>'
    return f'<td class="fail">failed: {_e(st.last_error or "unknown error")}</td>'


def _name_cell(name: str, close: str | None, discovered: bool = False) -> str:
    """The app's name; marked when the account's app list does not name it, or when it is
    polled because the list names it (discovery)."""
    if discovered:
        return f'<td>{_e(name)}<div class="small">discovered (app.list)</div></td>'
    if close is None:
        return f"<td>{_e(name)}</td>"
    hint = f" — did you mean {_e(close)}?" if close else ""
    return f'<td>{_e(name)}<div class="small fail">not in the account\'s app list{hint}</div></td>'


def _row(
    key: AppKey,
    close: str | None,
    discovered: bool,
    st: AppStatus,
    usage: AppUsage | None,
    budgets: Budgets,
    interval: float | None,
    now: float,
) -> str:
    age = (
        f"{_e(human_age(now - st.last_success))} ago"
        f'<div class="small">{_e(_utc(st.last_success))}</div>'
        if st.last_success
        else "never"
    )
    return (
        f"<tr><td>{_e(key.account)}</td>{_name_cell(key.app, close, discovered)}"
        f"{_status_cell(st)}"
        + _budget_cell(usage.day_bytes if usage else None, budgets[0])
        + _budget_cell(usage.month_bytes if usage else None, budgets[1])
        + f'<td class="num">{_e(usage.day_videos) if usage else "-"}</td>'
        + f'<td class="num">{_e(human_age(interval)) if interval else "-"}</td>'
        + f'<td class="num">{age}</td>'
        + f'<td class="num">{_e(_duration(st.poll_duration))}</td></tr>'
    )


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def render_landing(view: LandingView, now: float | None = None) -> str:
    """The landing page "/": what the exporter is and where each app stands."""
    now = time.time() if now is None else now
    rows = "".join(
        _row(key, view.listed.get(key), key in view.discovered, view.status[key],
             view.usage.get(key),
             view.budgets.get(key, (None, None)), view.interval, now)
        for key in sorted(view.status)
    )  # fmt: skip
    banner = ""
    if view.demo:
        banner = (
            '<p class="demo"><b>Demo mode.</b> These figures come from the built-in ScaleEngine '
            "simulator on loopback, not from your account; run without <code>--demo</code> "
            "and with your config for real data.</p>"
        )
    path = _e(view.telemetry_path)
    zone = f" ({_e(view.timezone)})" if view.timezone else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ScaleEngine Exporter</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style>
</head><body>
<h1>ScaleEngine Exporter</h1>
<p class="sub">Version {_e(view.version)}. Usage from ScaleEngine's usage.vse API, polled on a
schedule; a scrape never calls the API.
<a href="{path}">Metrics</a> · <a href="/-/healthy">Health</a> · <a href="/-/ready">Readiness</a>
</p>
{banner}<table>
<tr><th>Account</th><th>App</th><th>Last poll</th><th>Today{zone}</th><th>Month to date</th>
<th>Videos today</th><th>Poll interval</th><th>Data age</th><th>Poll duration</th></tr>
{rows}
</table>
<p class="small">Bytes in decimal units (1 GB = 10<sup>9</sup> bytes), as budgets are written.
Page rendered {_e(_utc(now))}.</p>
</body></html>
"""
