#!/usr/bin/env bash
# Checks everything under deploy/ that can be checked without a cluster:
#   1. Prometheus rules: `promtool check rules` and `promtool test rules` (alerts_test.yml);
#   2. the Grafana dashboard is what deploy/grafana/generate.py makes of queries.yml;
#   3. the edge nginx config (deploy/kubernetes/base/edge-nginx.conf) passes `nginx -t`, with
#      the Service names swapped for loopback addresses;
#   4. every Kubernetes overlay renders (`kubectl kustomize`), and the rendered manifests and
#      make-secrets.sh's Secrets validate against the Kubernetes JSON schemas in strict mode
#      (unknown fields are errors) with kubernetes-validate (PyPI, pinned; its schemas ship
#      inside the package, so it works offline), for each version in SB_K8S_VERSIONS.
# The live check (a real Prometheus scraping a running stack) is the e2e test
# `observability` (cargo test -p switchboard-e2e-tests --test e2e observability).
# Needs promtool, kubectl, nginx, python3 with PyYAML, openssl: scripts/install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSIONS="${SB_K8S_VERSIONS:-1.29.0 1.33.0}"
VALIDATE_VERSION=1.37.0
VALIDATE_VENV="${HOME:-/root}/.cache/switchboard/kubernetes-validate"

need() {
    command -v "$1" >/dev/null 2>&1 || { echo "check-deploy: $1 is missing ($2; scripts/install-deps.sh)" >&2; exit 1; }
}
need promtool "Debian package prometheus"
need kubectl "Debian package kubernetes-client"
need openssl "Debian package openssl"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "check-deploy: nginx is missing (scripts/install-deps.sh)" >&2; exit 1; }

echo "== promtool: alert rules"
promtool check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && promtool test rules alerts_test.yml)

echo "== Grafana dashboard"
python3 deploy/grafana/generate.py --check

echo "== edge nginx config"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/nginx"
sed -e 's/server registry:8101;/server 127.0.0.1:8101;/' \
    -e 's/server message-service:8401;/server 127.0.0.1:8401;/' \
    -e 's/server webhook-dispatcher:8501;/server 127.0.0.1:8501;/' \
    -e "s#^pid /tmp/nginx.pid;#pid $tmp/nginx/nginx.pid;#" \
    -e "s#/tmp/\([a-z]*_temp\)#$tmp/nginx/\1#" \
    deploy/kubernetes/base/edge-nginx.conf > "$tmp/nginx/nginx.conf"
"$NGINX" -t -q -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf"
echo "edge-nginx.conf: ok"

echo "== Kubernetes: render"
kubectl version --client 2>/dev/null | head -n 1 || true
for overlay in deploy/kubernetes/overlays/*/; do
    name=$(basename "$overlay")
    # Newer kustomize warns about `bases` and `patchesStrategicMerge`, which the Debian
    # kubectl's kustomize (v2.0.3) needs; the warnings are expected.
    kubectl kustomize "$overlay" > "$tmp/$name.yaml" 2> "$tmp/$name.err" || { cat "$tmp/$name.err" >&2; exit 1; }
    echo "$name: $(grep -c '^kind:' "$tmp/$name.yaml") objects"
done
bash deploy/kubernetes/make-secrets.sh --example switchboard > "$tmp/secrets.yaml"
echo "secrets: $(grep -c '^kind: Secret' "$tmp/secrets.yaml") Secrets"

echo "== Kubernetes: validate (kubernetes-validate $VALIDATE_VERSION, strict)"
if ! "$VALIDATE_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$VALIDATE_VERSION"; then
    echo "check-deploy: kubernetes-validate $VALIDATE_VERSION into $VALIDATE_VENV"
    python3 -m venv "$VALIDATE_VENV"
    "$VALIDATE_VENV/bin/pip" install -q "kubernetes-validate==$VALIDATE_VERSION"
fi
for version in $K8S_VERSIONS; do
    "$VALIDATE_VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$tmp"/*.yaml
    echo "Kubernetes $version: every object valid"
done

# Every object the services reference exists in the render (a misspelt Secret or ConfigMap
# name would only show at deploy time).
python3 - "$tmp" <<'PY'
import glob, sys, yaml
tmp = sys.argv[1]
objects = []
for path in glob.glob(f"{tmp}/*.yaml"):
    objects += [d for d in yaml.safe_load_all(open(path)) if d]
have = {(o["kind"], o["metadata"]["name"]) for o in objects}
secrets = {n for k, n in have if k == "Secret"}
maps = {n for k, n in have if k == "ConfigMap"}
keys = {o["metadata"]["name"]: set(o.get("stringData", {})) | set(o.get("data", {}) or {})
        for o in objects if o["kind"] in ("Secret", "ConfigMap")}
problems = []
for o in objects:
    if o["kind"] not in ("Deployment", "StatefulSet"):
        continue
    spec = o["spec"]["template"]["spec"]
    for c in spec["containers"]:
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            for kind, pool in (("secretKeyRef", secrets), ("configMapKeyRef", maps)):
                if kind in ref:
                    name, key = ref[kind]["name"], ref[kind]["key"]
                    if name not in pool or key not in keys.get(name, set()):
                        problems.append(f"{o['metadata']['name']}: {kind} {name}/{key} missing")
        for e in c.get("envFrom", []):
            if "configMapRef" in e and e["configMapRef"]["name"] not in maps:
                problems.append(f"{o['metadata']['name']}: ConfigMap {e['configMapRef']['name']} missing")
    for v in spec.get("volumes", []):
        if "secret" in v:
            name = v["secret"]["secretName"]
            for item in v["secret"].get("items", []):
                if name not in secrets or item["key"] not in keys.get(name, set()):
                    problems.append(f"{o['metadata']['name']}: Secret {name}/{item['key']} missing")
        if "configMap" in v and v["configMap"]["name"] not in maps:
            problems.append(f"{o['metadata']['name']}: ConfigMap {v['configMap']['name']} missing")
if problems:
    sys.exit("check-deploy: dangling references:\n  " + "\n  ".join(sorted(set(problems))))
print("references: every Secret and ConfigMap key the pods use exists")
PY
echo "check-deploy: ok"
