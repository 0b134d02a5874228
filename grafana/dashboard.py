"""Generate grafana/scaleengine-usage.json with grafanalib (pinned 0.7.1).

    python grafana/dashboard.py            # rewrite the committed JSON
    python grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

The dashboard uses a datasource variable (no ``__inputs``), so the same file can be
imported through the Grafana UI and provisioned from grafana/provisioning/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import attr
from grafanalib._gen import DashboardEncoder
from grafanalib.core import (
    Dashboard,
    GridPos,
    Panel,
    RowPanel,
    Stat,
    Table,
    Target,
    Template,
    Templating,
    Time,
    TimeSeries,
)

OUTPUT = Path(__file__).resolve().parent / "scaleengine-usage.json"

UID = "scaleengine-usage"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Every per-app query selects the chosen accounts and apps. Both variables' All is ".*", which
# also matches a series without the label (an exporter from before the `account` label).
APP = 'account=~"$account", app=~"$app"'
VIDEOS = f'{APP}, video_url!="__other__"'
# The labels that tell one app's series from another's: two accounts may share an app name,
# two exporters an account.
APP_LABELS = "account, app, instance, job"
LEGEND = "{{app}} {{account}}"

# The usage counters step once per poll (poll.interval, 5m by default), so rate() over a
# window holding no step reads 0, and over one holding a single step a spike. The rate panels'
# min interval is the hidden $poll_window: 2.5 poll intervals (from the exporter's
# scaleengine_poll_interval_seconds; 750s, 2.5 x the default 5m, for an exporter without the
# gauge). Grafana's $__rate_interval is then at least $poll_window + one scrape interval, so
# every window holds 2 or 3 steps whatever the scrape interval (up to a quarter poll), and the
# line reads within about 0.75..1.3 of the true rate instead of 0, 0, 0, spike. A longer
# range's own $__rate_interval stays the floor.
POLL_WINDOW_FACTOR = 2.5
POLL_WINDOW_DEFAULT = 750
RATE_INTERVAL = "${poll_window}s"

# Thresholds shared by the budget panels: warning at 80%, exceeded at 100%
# (the same as the ScaleEngine*BudgetWarning/Exceeded alerts).
BUDGET_STEPS = [
    {"color": "green", "value": None},
    {"color": "orange", "value": 0.8},
    {"color": "red", "value": 1},
]
# Age of the last successful poll: ScaleEngineDataStale fires after 30 minutes.
AGE_STEPS = [
    {"color": "green", "value": None},
    {"color": "orange", "value": 600},
    {"color": "red", "value": 1800},
]


@attr.s
class BarGauge(Panel):
    """A bar gauge in the current (fieldConfig) panel schema.

    grafanalib 0.7.1's BarGauge still writes the Grafana 6 ``fieldOptions`` layout.
    """

    unit = attr.ib(default="percentunit")
    min = attr.ib(default=0)
    max = attr.ib(default=1.2)
    displayMode = attr.ib(default="gradient")
    orientation = attr.ib(default="horizontal")

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {
                    "defaults": {
                        "color": {"mode": "thresholds"},
                        "mappings": [],
                        "max": self.max,
                        "min": self.min,
                        "unit": self.unit,
                    },
                    "overrides": [],
                },
                "options": {
                    "displayMode": self.displayMode,
                    "minVizHeight": 10,
                    "minVizWidth": 0,
                    "orientation": self.orientation,
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "showUnfilled": True,
                    "valueMode": "color",
                },
                "type": "bargauge",
            }
        )


def target(expr: str, legend: str = LEGEND, ref: str = "A", **kwargs: Any) -> Target:
    """A Prometheus query against the dashboard's datasource variable."""
    return Target(
        expr=expr,
        legendFormat=legend,
        refId=ref,
        datasource=DATASOURCE,
        intervalFactor=1,
        **kwargs,
    )


def budget_override(unit: str) -> list[dict[str, Any]]:
    """Draw the budget series (legend "... budget") as dashed lines without fill."""
    return [
        {
            "matcher": {"id": "byRegexp", "options": ".* budget$"},
            "properties": [
                {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
                {"id": "custom.fillOpacity", "value": 0},
                {"id": "unit", "value": unit},
            ],
        }
    ]


def timeseries(
    title: str, description: str, targets: list[Target], unit: str, **kw: Any
) -> TimeSeries:
    return TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=targets,
        unit=unit,
        legendDisplayMode="table",
        legendPlacement="right",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        fillOpacity=kw.pop("fillOpacity", 10),
        thresholds=kw.pop("thresholds", [{"color": "green", "value": None}]),
        **kw,
    )


def usage_panels() -> list[Panel]:
    return [
        RowPanel(title="Today", gridPos=GridPos(h=1, w=24, x=0, y=0)),
        BarGauge(
            title="Daily budget used",
            description=(
                "Bytes delivered today as a share of each app's daily budget "
                "(apps.daily_bytes_budget). Orange from 80%, red from 100%: the same "
                "thresholds as the ScaleEngineDailyBudget* alerts. Apps without a budget "
                "are not shown."
            ),
            dataSource=DATASOURCE,
            targets=[
                target(
                    f"scaleengine_vse_app_day_bytes{{{APP}}}"
                    f" / scaleengine_vse_app_day_bytes_budget{{{APP}}}",
                    instant=True,
                )
            ],
            thresholds=BUDGET_STEPS,
            gridPos=GridPos(h=8, w=8, x=0, y=1),
        ),
        timeseries(
            "Bytes today vs daily budget",
            (
                "Bytes delivered so far today per app (scaleengine_vse_app_day_bytes), "
                "with each app's daily budget as a dashed line. Resets when the app's day "
                "ends in poll.timezone."
            ),
            [
                target(f"scaleengine_vse_app_day_bytes{{{APP}}}"),
                target(
                    f"scaleengine_vse_app_day_bytes_budget{{{APP}}}",
                    legend=f"{LEGEND} budget",
                    ref="B",
                ),
            ],
            "decbytes",
            overrides=budget_override("decbytes"),
            gridPos=GridPos(h=8, w=16, x=8, y=1),
        ),
        timeseries(
            "Delivery rate",
            (
                "Bandwidth delivered per app in bits per second, from the growth of the "
                "day totals (8 * rate(scaleengine_vse_bytes_total)). The totals step once "
                "per poll, so each point averages at least 2.5 poll intervals (the panel's "
                "min interval, $poll_window from scaleengine_poll_interval_seconds)."
            ),
            [target(f"8 * rate(scaleengine_vse_bytes_total{{{APP}}}[$__rate_interval])")],
            "bps",
            interval=RATE_INTERVAL,
            gridPos=GridPos(h=8, w=12, x=0, y=9),
        ),
        timeseries(
            "Requests today",
            "Requests served so far today per app (scaleengine_vse_app_day_requests).",
            [target(f"scaleengine_vse_app_day_requests{{{APP}}}")],
            "short",
            gridPos=GridPos(h=8, w=12, x=12, y=9),
        ),
        Table(
            title="Top 20 videos today",
            description=(
                "The 20 videos with the most bytes delivered today across the selected "
                "apps. The exporter keeps the top videos per app and folds the rest into "
                'video_url="__other__", which is left out here.'
            ),
            dataSource=DATASOURCE,
            targets=[
                target(
                    f"topk(20, scaleengine_vse_day_bytes{{{VIDEOS}}})",
                    legend="",
                    instant=True,
                    format="table",
                ),
                target(
                    f"scaleengine_vse_day_requests{{{VIDEOS}}}"
                    f" and on ({APP_LABELS}, video_url)"
                    f" topk(20, scaleengine_vse_day_bytes{{{VIDEOS}}})",
                    legend="",
                    ref="B",
                    instant=True,
                    format="table",
                ),
            ],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "instance": True, "job": True},
                        "indexByName": {
                            "account": 0,
                            "app": 1,
                            "video_url": 2,
                            "Value #A": 3,
                            "Value #B": 4,
                        },
                        "renameByName": {
                            "account": "Account",
                            "app": "App",
                            "video_url": "Video",
                            "Value #A": "Bytes today",
                            "Value #B": "Requests today",
                        },
                    },
                },
            ],
            overrides=[
                {
                    "matcher": {"id": "byName", "options": "Bytes today"},
                    "properties": [
                        {"id": "unit", "value": "decbytes"},
                        {"id": "custom.displayMode", "value": "gradient-gauge"},
                    ],
                },
                {
                    "matcher": {"id": "byName", "options": "Requests today"},
                    "properties": [{"id": "unit", "value": "short"}],
                },
            ],
            sortBy=[],
            thresholds=[{"color": "green", "value": None}],
            extraJson={"options": {"sortBy": [{"desc": True, "displayName": "Bytes today"}]}},
            gridPos=GridPos(h=10, w=16, x=0, y=17),
        ),
        Stat(
            title="Videos with traffic today",
            description=(
                "Distinct videos with traffic today per app (scaleengine_vse_app_day_videos)."
            ),
            dataSource=DATASOURCE,
            targets=[target(f"scaleengine_vse_app_day_videos{{{APP}}}", instant=True)],
            format="short",
            graphMode="none",
            reduceCalc="lastNotNull",
            thresholds=[{"color": "blue", "value": None}],
            gridPos=GridPos(h=10, w=8, x=16, y=17),
        ),
    ]


def month_panels(y: int) -> list[Panel]:
    return [
        RowPanel(title="Month to date", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        BarGauge(
            title="Monthly budget used",
            description=(
                "Bytes delivered this month as a share of each app's monthly budget "
                "(apps.monthly_bytes_budget). Orange from 80%, red from 100%, as the "
                "ScaleEngineMonthlyBudget* alerts."
            ),
            dataSource=DATASOURCE,
            targets=[
                target(
                    f"scaleengine_vse_app_month_bytes{{{APP}}}"
                    f" / scaleengine_vse_app_month_bytes_budget{{{APP}}}",
                    instant=True,
                )
            ],
            thresholds=BUDGET_STEPS,
            gridPos=GridPos(h=8, w=8, x=0, y=y + 1),
        ),
        timeseries(
            "Month to date vs monthly budget",
            (
                "Bytes delivered this month per app (scaleengine_vse_app_month_bytes), "
                "with each app's monthly budget as a dashed line. Decimal units, as budgets "
                "are written (500GB = 500e9 bytes)."
            ),
            [
                target(f"scaleengine_vse_app_month_bytes{{{APP}}}"),
                target(
                    f"scaleengine_vse_app_month_bytes_budget{{{APP}}}",
                    legend=f"{LEGEND} budget",
                    ref="B",
                ),
            ],
            "decbytes",
            overrides=budget_override("decbytes"),
            gridPos=GridPos(h=8, w=10, x=8, y=y + 1),
        ),
        timeseries(
            "Requests this month",
            (
                "Play, pause and stop commands this month per app "
                "(scaleengine_vse_app_month_requests)."
            ),
            [target(f"scaleengine_vse_app_month_requests{{{APP}}}")],
            "short",
            gridPos=GridPos(h=8, w=6, x=18, y=y + 1),
        ),
    ]


def health_panels(y: int) -> list[Panel]:
    return [
        RowPanel(title="Exporter health", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        Stat(
            title="Last poll",
            description=(
                "Whether the exporter's last poll of the usage.vse API succeeded, per app "
                "(scaleengine_up). ScaleEnginePollsFailing fires after 10 minutes of "
                "failures; the exporter keeps serving the last good data meanwhile."
            ),
            dataSource=DATASOURCE,
            targets=[target(f"scaleengine_up{{{APP}}}", instant=True)],
            mappings=[
                {
                    "type": "value",
                    "options": {
                        "0": {"text": "FAILING", "color": "red", "index": 0},
                        "1": {"text": "OK", "color": "green", "index": 1},
                    },
                }
            ],
            colorMode="background",
            graphMode="none",
            reduceCalc="lastNotNull",
            thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
            gridPos=GridPos(h=6, w=6, x=0, y=y + 1),
        ),
        Stat(
            title="Age of last successful poll",
            description=(
                "Seconds since each app's last successful poll "
                "(time() - scaleengine_last_success_timestamp_seconds). Orange from 10 "
                "minutes, red from 30 minutes, when ScaleEngineDataStale starts."
            ),
            dataSource=DATASOURCE,
            targets=[
                target(
                    f"time() - scaleengine_last_success_timestamp_seconds{{{APP}}}",
                    instant=True,
                )
            ],
            format="s",
            graphMode="none",
            reduceCalc="lastNotNull",
            thresholds=AGE_STEPS,
            gridPos=GridPos(h=6, w=6, x=6, y=y + 1),
        ),
        timeseries(
            "API requests by outcome",
            (
                "usage.vse API requests per second by app and outcome "
                "(scaleengine_api_requests_total): success, or the error kind such as "
                "timeout, connection, http_status or api_<code>."
            ),
            [
                target(
                    f"sum by ({APP_LABELS}, outcome) "
                    f"(rate(scaleengine_api_requests_total{{{APP}}}[$__rate_interval]))",
                    legend=f"{LEGEND} {{{{outcome}}}}",
                )
            ],
            "reqps",
            interval=RATE_INTERVAL,
            gridPos=GridPos(h=6, w=12, x=12, y=y + 1),
        ),
        timeseries(
            "Poll duration",
            (
                "How long the last poll of each app took, all pages and retries included "
                "(scaleengine_poll_duration_seconds). Compare with poll.interval."
            ),
            [target(f"scaleengine_poll_duration_seconds{{{APP}}}")],
            "s",
            gridPos=GridPos(h=7, w=12, x=0, y=y + 7),
        ),
        timeseries(
            "Skipped API rows",
            (
                "Rows of the API's answer that the exporter could not use, per second "
                "(scaleengine_vse_skipped_rows_total). Should stay at zero."
            ),
            [
                target(
                    f"rate(scaleengine_vse_skipped_rows_total{{{APP}}}[$__rate_interval])",
                )
            ],
            "short",
            interval=RATE_INTERVAL,
            thresholds=[{"color": "green", "value": None}, {"color": "red", "value": 0.001}],
            gridPos=GridPos(h=7, w=6, x=12, y=y + 7),
        ),
        Stat(
            title="Exporter version",
            description="Version of each scraped exporter (scaleengine_exporter_build_info).",
            dataSource=DATASOURCE,
            targets=[
                target(
                    "count by (version) (scaleengine_exporter_build_info)",
                    legend="{{version}}",
                    instant=True,
                )
            ],
            textMode="name",
            graphMode="none",
            reduceCalc="lastNotNull",
            thresholds=[{"color": "text", "value": None}],
            gridPos=GridPos(h=7, w=6, x=18, y=y + 7),
        ),
    ]


# The history panels read one value per day: at each midnight (Grafana aligns a 1d step to UTC
# midnights) the largest value of the day that just ended. The window skips the first hour
# after midnight, where a live exporter may still serve the previous day's values until its
# next poll; a backfilled day has its one sample at 23:59:59, inside the window.
DAY_WINDOW = "23h"


def history_panels(y: int) -> list[Panel]:
    bars = {
        "drawStyle": "bars",
        "barAlignment": -1,  # the bar ends at the midnight that closes its day
        "fillOpacity": 80,
        "lineWidth": 1,
        "stacking": {"mode": "normal", "group": "A"},
        "interval": "1d",
        # up to a year of daily steps: Grafana's step is max(interval, range / maxDataPoints)
        "maxDataPoints": 400,
    }
    return [
        RowPanel(title="History", gridPos=GridPos(h=1, w=24, x=0, y=y)),
        timeseries(
            "Daily bytes per app",
            (
                "Bytes delivered per app and day over the last 30 days: each bar is "
                f"max_over_time(scaleengine_vse_app_day_bytes[{DAY_WINDOW}]) at the midnight "
                "that closes the day, so days the exporter scraped live and days loaded with "
                "`scaleengine-exporter backfill` read the same. Exact when poll.timezone is "
                "UTC (Grafana steps by UTC days); live days miss data that arrived after "
                "midnight, backfilled days include it."
            ),
            [target(f"max_over_time(scaleengine_vse_app_day_bytes{{{APP}}}[{DAY_WINDOW}])")],
            "decbytes",
            timeFrom="30d",
            gridPos=GridPos(h=8, w=12, x=0, y=y + 1),
            **bars,
        ),
        timeseries(
            "Month by month",
            (
                "Month to date per app at the end of each day over the last year "
                f"(max_over_time(scaleengine_vse_app_month_bytes[{DAY_WINDOW}]) at each "
                "midnight): every month climbs to its total, the last bar before the drop. "
                "Live and backfilled days read the same."
            ),
            [target(f"max_over_time(scaleengine_vse_app_month_bytes{{{APP}}}[{DAY_WINDOW}])")],
            "decbytes",
            timeFrom="1y",
            gridPos=GridPos(h=8, w=12, x=12, y=y + 1),
            **bars,
        ),
    ]


def label_variable(name: str, label: str, query: str) -> Template:
    """Multi-select variable, "All" (".*": also a series without the label) by default."""
    variable = Template(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        multi=True,
        includeAll=True,
        allValue=".*",
        refresh=2,
    )
    variable._current = {"selected": True, "text": ["All"], "value": ["$__all"]}
    return variable


def poll_window_variable() -> Template:
    """Hidden: 2.5 poll intervals in whole seconds, the rate panels' min interval."""
    variable = Template(
        name="poll_window",
        label="Poll window",
        query=(
            f"query_result(ceil({POLL_WINDOW_FACTOR} * max(scaleengine_poll_interval_seconds))"
            f" or vector({POLL_WINDOW_DEFAULT}))"
        ),
        # query_result() lists "{} 750 1700000000000": the value is the second field
        regex=r"/.* (\d+) \d+$/",
        dataSource=DATASOURCE,
        hide=2,
        refresh=2,
    )
    variable._current = {"text": str(POLL_WINDOW_DEFAULT), "value": str(POLL_WINDOW_DEFAULT)}
    return variable


def build() -> Dashboard:
    """The ScaleEngine usage dashboard."""
    return Dashboard(
        title="ScaleEngine usage",
        uid=UID,
        description=(
            "Bandwidth and requests per ScaleEngine app from scaleengine-exporter, "
            "against daily and monthly budgets, with the exporter's own health."
        ),
        tags=["scaleengine", "cdn", "bandwidth"],
        timezone="browser",
        refresh="1m",
        time=Time("now-24h", "now"),
        schemaVersion=39,
        graphTooltip=1,
        templating=Templating(
            list=[
                Template(
                    name="datasource",
                    label="Data source",
                    query="prometheus",
                    type="datasource",
                    default="default",
                ),
                label_variable("account", "Account", "label_values(scaleengine_up, account)"),
                label_variable(
                    "app", "App", 'label_values(scaleengine_up{account=~"$account"}, app)'
                ),
                poll_window_variable(),
            ]
        ),
        panels=usage_panels() + month_panels(27) + health_panels(36) + history_panels(50),
    ).auto_panel_ids()


def render() -> str:
    """The dashboard JSON exactly as committed."""
    data = build().to_json_data()
    return json.dumps(data, cls=DashboardEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.exists() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
