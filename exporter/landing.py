"""The landing page "/": one small server-rendered page, every server text HTML-escaped."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from .web import WebApp


def render_landing(app: WebApp) -> str:
    """The landing page "/": what the exporter is and how each app's polls went."""
    view = app.store.view()
    rows = []
    for name in sorted(view.status):
        st = view.status[name]
        if not st.polled:
            result = "not polled yet"
        elif st.up:
            result = "ok"
        else:
            result = "failed: " + (st.last_error or "unknown error")
        last = (
            datetime.fromtimestamp(st.last_success, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            if st.last_success
            else "never"
        )
        usage = view.usage.get(name)
        videos = str(usage.day_videos) if usage else "-"
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(v)}</td>"
                for v in (name, result, last, videos, _fmt_duration(st.poll_duration))
            )
            + "</tr>"
        )
    path = html.escape(app.telemetry_path)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ScaleEngine Exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style>
</head><body>
<h1>ScaleEngine Exporter</h1>
<p>Version {html.escape(__version__)}. Usage data from ScaleEngine's usage.vse API, polled on a
schedule; a scrape never calls the API.</p>
<ul><li><a href="{path}">Metrics</a></li><li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a></li></ul>
<h2>Apps</h2>
<table><tr><th>App</th><th>Last poll</th><th>Last success</th><th>Videos today</th>
<th>Poll duration</th></tr>
{"".join(rows)}
</table></body></html>
"""


def _fmt_duration(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"
