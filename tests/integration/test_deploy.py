"""deploy/: the Grafana dashboard asks only for metrics a live server exports; the
Kubernetes sidecar example parses, and its settings, probes and volumes fit together."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request

import yaml

from semcache_server.auth import parse_tokens
from semcache_server.settings import Settings
from tests.helpers import REPO, unit_vector

DASHBOARD = REPO / "deploy" / "grafana" / "semcache-dashboard.json"
SIDECAR = REPO / "deploy" / "kubernetes" / "sidecar.yaml"
P = {"namespace": "ops", "model": "m"}


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["type"] in ("timeseries", "stat", "gauge", "table")
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        for target in panel["targets"]:
            for name in re.findall(r"\$(\w+)", target["expr"]):
                assert name.startswith("__") or name in variables, (panel["title"], name)


def test_dashboard_metrics_are_exported(make_server):
    server, client = make_server(embedder=None, metrics_listen="127.0.0.1:0")
    client.store(P, "q", "a", embedding=unit_vector(1))
    client.lookup(P, "q", embedding=unit_vector(1))
    client.lookup(P, "other", embedding=unit_vector(2), lease=True)
    exported = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    names = {line.split()[2] for line in exported.splitlines() if line.startswith("# TYPE ")}
    series = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in exported.splitlines() if line and not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    wanted = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"semcache_\w+", t["expr"])}
    missing = {m for m in wanted if m not in series and re.sub(r"_(total|bucket|sum|count)$", "", m) not in names}
    assert not missing, missing
    assert "semcache_leases_active" in series and "semcache_leases_granted_total" in series


def _sidecar():
    documents = list(yaml.safe_load_all(SIDECAR.read_text()))
    workload = next(d for d in documents if d["kind"] in ("StatefulSet", "Deployment", "Pod"))
    secret = next(d for d in documents if d["kind"] == "Secret")
    spec = workload["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "semcache")
    return workload, secret, spec, container


def test_sidecar_probes_ports_volumes_and_resources_fit():
    workload, _, spec, container = _sidecar()
    assert workload["apiVersion"] == "apps/v1"
    args = container["args"]
    assert args[0] == "serve"
    listen_port = int(args[args.index("--listen") + 1].rpartition(":")[2])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == listen_port, probe
    assert listen_port in [p["containerPort"] for p in container["ports"]]
    volumes = {v["name"] for v in spec.get("volumes", [])}
    volumes |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert all(name in volumes for name in mounts.values())
    assert args[args.index("--data-dir") + 1] in mounts
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]


def test_sidecar_settings_are_valid_for_this_server():
    _, secret, _, container = _sidecar()
    fields = set(Settings.__dataclass_fields__)
    env = {}
    for item in container["env"]:
        assert item["name"].startswith("SEMCACHE_") and item["name"][9:].lower() in fields, item["name"]
        if "value" in item:
            env[item["name"]] = item["value"]
    parse_tokens(secret["stringData"]["auth-tokens"])
    result = subprocess.run(
        [sys.executable, "-m", "semcache_server", "config", *container["args"][1:]],
        env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "0.0.0.0:50051" in result.stdout
