"""Prometheus alerting rules: promtool checks and the shape of the unit tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from helpers import need_binary

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts.test.yml"
EXAMPLE = PROM_DIR / "prometheus.example.yml"


def _promtool() -> str:
    return need_binary("promtool")


def _alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total = 0.0
    for number, unit in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text):
        total += int(number) * units[unit]
    return total


def _promtool_run(*args: str) -> subprocess.CompletedProcess:
    """promtool with ``args`` in prometheus/ (relative rule paths resolve there); must pass."""
    result = subprocess.run(
        [_promtool(), *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_promtool_check_rules():
    result = _promtool_run("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_promtool_test_rules():
    assert "SUCCESS" in _promtool_run("test", "rules", ALERTS_TEST.name).stdout


def test_promtool_check_example_config():
    _promtool_run("check", "config", EXAMPLE.name)


def test_example_config_scrapes_exporter_and_loads_rules():
    config = yaml.safe_load(EXAMPLE.read_text())
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "scaleengine" in jobs, "ScaleEngineExporterDown relies on job=scaleengine"
    targets = [t for sc in jobs["scaleengine"]["static_configs"] for t in sc["targets"]]
    assert any(t.endswith(":8491") for t in targets)


def test_every_alert_fires_and_stays_silent_in_unit_tests():
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    fired: dict[str, list[dict]] = {}
    silent: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            name = case["alertname"]
            if case.get("exp_alerts"):
                fired.setdefault(name, []).extend(case["exp_alerts"])
            else:
                silent.add(name)
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    assert set(rules) - set(fired) == set(), "alerts never tested firing"
    assert set(rules) - silent == set(), "alerts never tested silent"
    assert set(fired) | silent <= set(rules), "unit tests name alerts that do not exist"
    for name, alerts in fired.items():
        for alert in alerts:
            labels = alert.get("exp_labels", {})
            annotations = alert.get("exp_annotations", {})
            assert labels.get("severity") == rules[name]["labels"]["severity"], name
            assert annotations.get("summary") and annotations.get("description"), name
            # Templates must have been expanded: no Go template syntax left over.
            for text in annotations.values():
                assert "{{" not in text and "<no value>" not in text, (name, text)


def test_alert_rules_shape():
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, name
        # per-app metrics name the app; per-account ones (scaleengine_discovery_*) the
        # account; the exporter's own (scaleengine_state_*, scaleengine_exporter_*) the
        # instance
        per_app = re.search(r"scaleengine_(?!state_|exporter_|discovery_)", rule["expr"])
        per_account = "scaleengine_discovery_" in rule["expr"]
        subject = (
            "$labels.app" if per_app else "$labels.account" if per_account else "$labels.instance"
        )
        for key in ("summary", "description"):
            assert subject in annotations[key], f"{name} {key} should name {subject}"
        if "Exceeded" in name:
            # The real-Prometheus test relies on this alert firing within seconds.
            assert _duration_seconds(rule.get("for", "0s")) <= 15, name


def test_alert_values_are_humanized():
    for rule in _alert_rules():
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        # Budgets, dashboard and README are decimal (500GB = 500e9 bytes): bytes print with
        # humanize ("500GB"), never humanize1024 ("465.7GiB" for the same budget).
        assert "humanize1024" not in text, rule["alert"]
        if "Budget" in rule["alert"]:
            assert "| humanize }}B" in text, rule["alert"]
        if rule["alert"] in {"ScaleEngineDataStale", "ScaleEnginePollsFailing"}:
            assert "humanizeDuration" in text, rule["alert"]


def test_per_app_alerts_keep_and_name_the_account():
    """With several accounts every per-app series carries `account`: the annotations name
    it, and every query they run selects it along with app, instance and job, so two
    accounts sharing an app name never mix (the promtool tests hold such a pair)."""
    per_app = 0
    for rule in _alert_rules():
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        if "$labels.app" not in text:
            continue
        per_app += 1
        for key in ("summary", "description"):
            assert "with $labels.account" in rule["annotations"][key], (rule["alert"], key)
        for query in re.findall(r'printf\s+"((?:\\.|[^"\\])*)"', text):
            if "app=" in query:
                assert "account='%s',app='%s'" in query, (rule["alert"], query)
        assert not re.search(r"\b(on|ignoring|by)\s*\((?![^)]*account)[^)]*\bapp\b", rule["expr"])
    assert per_app == 8
