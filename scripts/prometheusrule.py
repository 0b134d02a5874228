"""Write deploy/kubernetes/prometheusrule.yaml from prometheus/alerts.yml.

The PrometheusRule carries exactly the groups of prometheus/alerts.yml, so the alerts are
written once. Run after editing the rules:

    .venv/bin/python scripts/prometheusrule.py          # rewrite the manifest
    .venv/bin/python scripts/prometheusrule.py --check  # exit 1 when it differs (the tests)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "prometheus" / "alerts.yml"
OUTPUT = ROOT / "deploy" / "kubernetes" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from prometheus/alerts.yml by scripts/prometheusrule.py: edit the rules there and
# run `.venv/bin/python scripts/prometheusrule.py` (the tests fail while the two differ).
#
# The alert rules for the prometheus-operator. kube-prometheus-stack only picks up
# PrometheusRules whose labels match its ruleSelector (by default `release: <its Helm
# release name>`): add that label here, or set ruleSelectorNilUsesHelmValues=false.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(alerts_text: str) -> str:
    """The PrometheusRule manifest holding the groups of ``alerts_text``."""
    groups = yaml.safe_load(alerts_text)["groups"]
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "scaleengine-exporter",
            "labels": {"app.kubernetes.io/name": "scaleengine-exporter"},
        },
        "spec": {"groups": groups},
    }
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = render(ALERTS.read_text(encoding="utf-8"))
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT.relative_to(ROOT)} differs from {ALERTS.relative_to(ROOT)}: "
                  "run .venv/bin/python scripts/prometheusrule.py", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
