"""The dashboard and the alerting rules against a real Prometheus scraping the exporter.

Everything checked here is read from the artefacts (grafana/scaleengine-usage.json,
prometheus/alerts.yml): a renamed metric, a broken query or a rule Prometheus cannot
evaluate fails these tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "scaleengine-usage.json"
ALERTS = ROOT / "prometheus" / "alerts.yml"

# Series Prometheus makes itself for every target; the rules may use them.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip

# Grafana's built-in interval variables, as Grafana would fill them for a 1s scrape.
GRAFANA_INTERVALS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${__rate_interval}": "1m",
    "${__interval}": "15s",
    "${__range}": "1h",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, labels or keywords)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    found = re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", s)
    return {name for name in found if name.lower() not in PROMQL_WORDS}


def test_metric_names_extractor():
    assert metric_names(
        'sum by (app, outcome) (rate(x_total{app=~"$app", a="b c"}[5m] offset 1h)) / on(app) y'
        " > 0.8 and time() - z_seconds{app='a'} > 1e3"
    ) == {"x_total", "y", "z_seconds"}


def dashboard_panels() -> list[dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p.get("targets")]


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard_panels() for t in p["targets"]]


def dashboard_variables() -> dict[str, dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def rule_exprs() -> list[tuple[str, str]]:
    """Alert expressions and the queries their annotation templates run."""
    out = []
    for rule in alert_rules():
        out.append((rule["alert"], rule["expr"]))
        for text in rule.get("annotations", {}).values():
            for query in re.findall(r'printf\s+"((?:\\.|[^"\\])*)"', text):
                out.append((rule["alert"] + " annotation", query.replace("%s", "x")))
    return out


def exporter_sample_names(exporter) -> set[str]:
    """The sample names the exporter serves, and those of the counters it declares without
    a sample yet (e.g. scaleengine_discovery_failures_total before any failure)."""
    names = set()
    for family in text_string_to_metric_families(exporter.metrics()):
        names.update(sample.name for sample in family.samples)
        if family.type == "counter" and not family.samples:
            names.add(family.name + "_total")
    return names


def app_values(prometheus) -> list[str]:
    """The values the dashboard's $app variable offers, from its label_values() query."""
    query = dashboard_variables()["app"]["query"]
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"unexpected $app variable query {query!r}"
    selector, label = match.groups()
    selector = selector.replace("$account", ".*")  # All accounts
    return prometheus.api(f"/api/v1/label/{label}/values", **{"match[]": selector})


def fill_variables(expr: str, apps: list[str]) -> str:
    """The query as Grafana sends it with $app = the given apps (multi-select) and $account
    = All (".*": the demo exporter's series may or may not carry the label)."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    # Grafana's Prometheus datasource escapes regex characters with a double backslash.
    escaped = [re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\\\1", a) for a in apps]
    app = "(" + "|".join(escaped) + ")"
    expr = expr.replace("${app}", app).replace("$app", app)
    expr = expr.replace("${account}", ".*").replace("$account", ".*")
    assert "$" not in expr, f"unfilled variable in {expr!r}"
    return expr


def test_app_variable_lists_the_demo_apps(exporter, prometheus):
    assert sorted(app_values(prometheus)) == sorted(exporter.apps)


@pytest.mark.parametrize("selection", ["two apps", "all apps"])
def test_every_dashboard_query_returns_series(prometheus, selection):
    apps = app_values(prometheus)
    apps = apps[:2] if selection == "two apps" else apps
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    empty = []
    for title, expr in exprs:
        query = fill_variables(expr, apps)
        result = prometheus.query(query)
        if not result:
            empty.append(f"{title}: {query}")
        for series in result:
            app = series["metric"].get("app")
            assert app is None or app in apps, f"{title}: $app not applied ({query})"
    assert not empty, "dashboard queries without series:\n" + "\n".join(empty)


def test_every_metric_name_exists_in_exporter_output(exporter, prometheus):
    exposed = exporter_sample_names(exporter)
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_exprs() + rule_exprs():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(where)
    for var in dashboard_variables().values():
        if var["type"] != "query":
            continue
        query = re.sub(r"^label_values\((.+),\s*\w+\)$", r"\1", var["query"])
        query = re.sub(r"^query_result\((.*)\)$", r"\1", query)
        for name in metric_names(query):
            used.setdefault(name, set()).add(f"${var['name']} variable")
    assert "scaleengine_poll_interval_seconds" in used
    assert len(used) >= 12, sorted(used)
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in exposed and name not in PROMETHEUS_SYNTHETIC
    }
    assert not missing, f"metrics used but not exposed by the exporter: {missing}"
    for name in set(used) & PROMETHEUS_SYNTHETIC:
        assert prometheus.query(f'{name}{{job="{exporter.job}"}}'), name


def test_rules_load_healthy(prometheus):
    expected = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> list[dict] | None:
        rules = [r for g in prometheus.api("/api/v1/rules")["groups"] for r in g["rules"]]
        if rules and all(r["health"] == "ok" and r["evaluationTime"] > 0 for r in rules):
            return rules
        return None

    rules = prometheus.wait_for("every rule evaluated healthy", evaluated, 30)
    assert {r["name"] for r in rules} == expected
    assert all(not r.get("lastError") for r in rules)


def test_exceeded_budget_alert_fires(exporter, prometheus):
    def firing() -> list[dict]:
        return [
            a
            for a in prometheus.api("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == "ScaleEngineDailyBudgetExceeded"
            and a["state"] == "firing"
        ]

    alerts = prometheus.wait_for("ScaleEngineDailyBudgetExceeded to fire", firing, 30)
    low = exporter.low_budget_app
    assert [a["labels"]["app"] for a in alerts] == [low], alerts
    alert = alerts[0]
    assert alert["labels"]["severity"] == "critical" and alert["labels"]["job"] == exporter.job
    summary, description = alert["annotations"]["summary"], alert["annotations"]["description"]
    assert low in summary and low in description
    # Humanized in decimal units, as budgets are written: the budget (1KB = 1000 bytes) reads
    # 1kB, today's bytes e.g. 2.345GB (never GiB).
    assert "daily budget of 1kB." in description, description
    assert re.search(r"delivered \d+(\.\d+)?[kMGT]B today", description), description
    assert "<no value>" not in description and "{{" not in description
    others = [
        a["labels"]["alertname"]
        for a in prometheus.api("/api/v1/alerts")["alerts"]
        if a["state"] == "firing" and a["labels"]["alertname"] != "ScaleEngineDailyBudgetExceeded"
    ]
    assert others == [], f"alerts firing for a healthy demo: {others}"
