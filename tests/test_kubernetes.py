"""deploy/kubernetes: valid against Kubernetes' schemas offline, wired together, and the
PrometheusRule generated from prometheus/alerts.yml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30"  # an old enough cluster for the fields used; checked on the newest too
DURATION = (  # the CRDs' pattern of a Prometheus duration
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)


def _load(name: str) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / name).read_text()))
    assert len(docs) == 1, f"{name}: one object per file"
    return docs[0]


def _kustomization() -> dict:
    return _load("kustomization.yaml")


def _objects() -> dict[str, dict]:
    """kind -> object, for every resource kustomization.yaml lists."""
    out = {}
    for name in _kustomization()["resources"]:
        obj = _load(name)
        assert obj["kind"] not in out, f"two {obj['kind']}s"
        out[obj["kind"]] = obj
    return out


def test_kustomization_lists_every_manifest_but_the_secret_example():
    listed = set(_kustomization()["resources"])
    present = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}
    for path in DEPLOY.glob("*.yaml"):  # each documented in a comment
        assert path.read_text().startswith("#"), f"{path.name} starts without a comment"


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
def test_core_manifests_pass_kubernetes_schemas_strictly(version):
    names = [*_kustomization()["resources"], "secret.example.yaml"]
    core = [n for n in names if not _load(n)["apiVersion"].startswith("monitoring.coreos.com")]
    assert len(core) == 6
    for name in core:
        kubernetes_validate.validate(_load(name), version, strict=True)


def test_the_validator_refuses_a_wrong_field():
    """The check above can fail: a misspelt field and a wrong type are refused."""
    deployment = _load("deployment.yaml")
    deployment["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = _load("deployment.yaml")
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# The monitoring.coreos.com/v1 fields used, with their types and patterns as the
# prometheus-operator's CRDs define them; no other field is allowed.
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": _STR_MAP},
    "required": ["name"],
    "additionalProperties": False,
}


def _object(kind: str, spec: dict) -> dict:
    """The schema of a monitoring.coreos.com/v1 object of ``kind`` with ``spec``."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
    }


PROMETHEUS_RULE = _object(
    "PrometheusRule",
    {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": DURATION},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["expr"],
                                "additionalProperties": False,
                                "properties": {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    "expr": {"type": ["string", "integer"]},
                                    "for": {"type": "string", "pattern": DURATION},
                                    "keep_firing_for": {"type": "string", "pattern": DURATION},
                                    "labels": _STR_MAP,
                                    "annotations": _STR_MAP,
                                },
                                "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                            },
                        },
                    },
                },
            }
        },
    },
)
SERVICE_MONITOR = _object(
    "ServiceMonitor",
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"matchLabels": _STR_MAP},
            },
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["port"],
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "relabelings": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "targetLabel": {"type": "string"},
                                    "replacement": {"type": "string"},
                                    "sourceLabels": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                    "regex": {"type": "string"},
                                    "action": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
)


def test_prometheus_rule_fields():
    rule = _load("prometheusrule.yaml")
    jsonschema.validate(rule, PROMETHEUS_RULE)
    broken = _load("prometheusrule.yaml")
    broken["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PROMETHEUS_RULE)


def test_prometheus_rule_carries_exactly_the_groups_of_alerts_yml():
    alerts = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    assert _load("prometheusrule.yaml")["spec"]["groups"] == alerts["groups"]
    check = [sys.executable, str(ROOT / "scripts" / "prometheusrule.py"), "--check"]
    proc = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_prometheus_rule_check_fails_when_the_rules_differ(tmp_path):
    """The generator's --check notices a rule edited in alerts.yml and not regenerated."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import prometheusrule
    finally:
        sys.path.pop(0)
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    assert prometheusrule.render(alerts) == (DEPLOY / "prometheusrule.yaml").read_text()
    edited = alerts.replace("for: 5m", "for: 6m", 1)
    assert edited != alerts
    assert prometheusrule.render(edited) != (DEPLOY / "prometheusrule.yaml").read_text()


def test_service_monitor_fields_and_wiring():
    objs = _objects()
    monitor, service = objs["ServiceMonitor"], objs["Service"]
    jsonschema.validate(monitor, SERVICE_MONITOR)
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    # the job the alert ScaleEngineExporterDown watches
    alerts = (ROOT / "prometheus" / "alerts.yml").read_text()
    job = re.search(r'up\{job="([^"]+)"\}', alerts).group(1)
    relabel = monitor["spec"]["endpoints"][0]["relabelings"]
    assert {"targetLabel": "job", "replacement": job} in relabel
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_deployment_runs_one_locked_down_pod():
    deployment = _objects()["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    # the pod template carries the labels the Service selects
    service = _objects()["Service"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"] == service["spec"]["selector"]
    target = service["spec"]["ports"][0]["targetPort"]
    assert target in {p["name"] for p in container["ports"]}


def test_deployment_mounts_what_its_arguments_name(tmp_path):
    objs = _objects()
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])  # the exporter's own parser
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_dir, config_file = args.config.rsplit("/", 1)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == objs["ConfigMap"]["metadata"]["name"]
    assert config_file in objs["ConfigMap"]["data"]
    state_dir = args.state_path.rsplit("/", 1)[0]
    claim = volumes[mounts[state_dir]]["persistentVolumeClaim"]["claimName"]
    assert claim == objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]  # temporary files with a read-only root
    # the config in the ConfigMap is one the exporter accepts, with the same state path
    path = tmp_path / config_file
    path.write_text(objs["ConfigMap"]["data"][config_file])
    env = {"SCALEENGINE_API_KEY": "k" * 16, "SCALEENGINE_API_SECRET": "s" * 32}
    config = load_config(str(path), env=env)
    assert config.state.path == args.state_path
    # credentials come from the Secret the example shows, under the keys it sets
    secret = _load("secret.example.yaml")
    for var in container["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert {v["name"] for v in container["env"]} == set(env)
