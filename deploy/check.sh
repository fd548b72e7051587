#!/usr/bin/env bash
# Checks the deployment files. Run from the repository root:
#
#   bash deploy/check.sh [PATH-TO-custodia-BINARY]
#
# 1. render: `kubectl kustomize` of the base and every overlay;
# 2. schema: kubernetes-validate (PyPI, schemas bundled, offline) in strict mode,
#    against the newest Kubernetes it bundles that we pin (K8S_VERSION) and the
#    oldest we support (K8S_MIN_VERSION: native preStop sleep needs 1.30);
# 3. config drift: the real binary runs `custodia config check` on each rendered
#    ConfigMap's custodia.toml with the environment each rendered Deployment/Job
#    sets (deploy/check_config.py), so a key the binary does not accept fails.
# The binary: $1, else target/debug/custodia, else built with cargo.
set -euo pipefail

K8S_VERSION=1.37.0
K8S_MIN_VERSION=1.30.0
KV_PACKAGE="kubernetes-validate==1.37.0"

ROOT=$(pwd)
if [ ! -f "$ROOT/deploy/kubernetes/base/kustomization.yaml" ]; then
  echo "deploy/check.sh: run it from the repository root (bash deploy/check.sh)" >&2
  exit 2
fi
KUSTOMIZATIONS=(deploy/kubernetes/base deploy/kubernetes/overlays/dev deploy/kubernetes/overlays/production)
OUT=$(mktemp -d "${TMPDIR:-/tmp}/custodia-deploy-check.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

# --- 1. render ---------------------------------------------------------------
if command -v kubectl >/dev/null 2>&1; then
  render() { kubectl kustomize "$1"; }
  RENDERER="kubectl kustomize ($(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p'))"
elif command -v kustomize >/dev/null 2>&1; then
  render() { kustomize build "$1"; }
  RENDERER="kustomize build"
else
  echo "render: FAILED: neither kubectl nor kustomize is on PATH." >&2
  echo "  Install kubectl (it bundles kustomize), e.g. 'apt-get install kubectl' from the Kubernetes apt repository," >&2
  echo "  or a kustomize binary, then re-run: bash deploy/check.sh" >&2
  exit 1
fi
RENDERED=()
for k in "${KUSTOMIZATIONS[@]}"; do
  name=$(basename "$k")
  if ! render "$k" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    echo "render: FAILED: $k" >&2
    cat "$OUT/$name.err" >&2
    exit 1
  fi
  RENDERED+=("$OUT/$name.yaml")
done
count=$(cat "${RENDERED[@]}" | grep -c '^kind:' || true)
echo "render: ok: ${#KUSTOMIZATIONS[@]} kustomizations ($count resources) with $RENDERER"

# --- 2. schema validation ------------------------------------------------------
kv_ok() { "$1" -c "import kubernetes_validate.utils as u, yaml; assert '$K8S_VERSION' in u.all_versions()" >/dev/null 2>&1; }
PY=python3
if ! kv_ok "$PY"; then
  PY="$ROOT/.ci/.tools/venv/bin/python"
  if ! kv_ok "$PY"; then
    echo "schema: installing $KV_PACKAGE into .ci/.tools/venv"
    python3 -m venv "$ROOT/.ci/.tools/venv"
    "$PY" -m pip install -q --disable-pip-version-check "$KV_PACKAGE"
    kv_ok "$PY" || { echo "schema: FAILED: kubernetes-validate does not support $K8S_VERSION" >&2; exit 1; }
  fi
fi
for v in "$K8S_VERSION" "$K8S_MIN_VERSION"; do
  if ! "$PY" -m kubernetes_validate -k "$v" --strict --quiet "${RENDERED[@]}" deploy/kubernetes/base/secret.example.yaml; then
    echo "schema: FAILED against Kubernetes $v (strict)" >&2
    exit 1
  fi
done
echo "schema: ok: kubernetes-validate --strict against Kubernetes $K8S_VERSION and $K8S_MIN_VERSION (+ secret.example.yaml)"

# --- 3. config drift -----------------------------------------------------------
BIN=${1:-target/debug/custodia}
if [ ! -x "$BIN" ]; then
  if [ $# -ge 1 ]; then
    echo "config drift: FAILED: no executable custodia binary at $BIN" >&2
    exit 1
  fi
  echo "config drift: building the custodia binary (cargo build -q --locked -p custodia)"
  cargo build -q --locked -p custodia
fi
"$PY" deploy/check_config.py --binary "$BIN" --repo "$ROOT" \
  --example deploy/kubernetes/base/secret.example.yaml "${RENDERED[@]}"
echo "deploy check passed"
