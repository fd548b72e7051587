#!/usr/bin/env bash
# Callers written by people who are not us, against a real `custodia serve`:
#   - examples/python/custodia_calls.py: the official Connect client for Python
#     (connectrpc) with code its generators make from proto/ now, over Connect
#     JSON, Connect proto and gRPC-Web;
#   - examples/php/example.php: Debian's php-cli with php-curl, Connect JSON;
#   - GET /openapi.json, validated by openapi-spec-validator.
# It builds nothing; give it the binary (default target/debug/custodia):
#
#   bash tests/clients/run.sh [PATH-TO-custodia]
#
# Installs what is missing: a Python venv in .ci/.tools/clients-venv with the
# pinned tests/clients/requirements.txt, and php-cli + php-curl with apt-get
# (as root). Exits non-zero when any check fails.
set -euo pipefail

BIN=${1:+$(realpath "$1" 2>/dev/null || echo "$1")}
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${BIN:-$ROOT/target/debug/custodia}
if [ ! -x "$BIN" ]; then
  echo "clients: no custodia binary at $BIN (cargo build -p custodia)" >&2
  exit 2
fi

# --- tools ---------------------------------------------------------------------
VENV=$ROOT/.ci/.tools/clients-venv
REQUIREMENTS=$ROOT/tests/clients/requirements.txt
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt"; then
  echo "clients: installing Python packages into .ci/.tools/clients-venv"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQUIREMENTS"
  cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi
export PATH="$VENV/bin:$PATH" # protoc-gen-py and protoc-gen-connectrpc, found by protoc

if ! php -r 'exit(function_exists("curl_init") ? 0 : 1);' 2>/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "clients: php with curl is missing: apt-get install php-cli php-curl" >&2
    exit 2
  fi
  echo "clients: installing php-cli and php-curl"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends php-cli php-curl >/dev/null
fi

# --- client code, generated now and never committed ------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/custodia-clients.XXXXXX")
SERVER=
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir "$WORK/gen"
python -m grpc_tools.protoc -I proto --py_out="$WORK/gen" --connectrpc_out="$WORK/gen" \
  $(find proto -name '*.proto')
echo "clients: generated the Python client into a temporary directory (connectrpc $(python -c 'import importlib.metadata as m; print(m.version("connectrpc"))'))"

# --- the server ------------------------------------------------------------------
export CUSTODIA_ADMIN_TOKEN=clients-test-admin-token
env -u CUSTODIA_CONFIG -u CUSTODIA_DATABASE_URL CUSTODIA__TELEMETRY__LOG_FORMAT=json \
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER=$!
ADDR=
for _ in $(seq 1 120); do
  ADDR=$(grep '"custodia is serving"' "$WORK/server.log" | grep -o '"addr":"[^"]*"' | cut -d'"' -f4 || true)
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER" 2>/dev/null || break
  sleep 0.5
done
if [ -z "$ADDR" ]; then
  echo "clients: custodia serve did not start; its log:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi
URL=http://$ADDR

# Health over gRPC-Web with plain curl: the answer's first frame is
# HealthCheckResponse{status: SERVING}, bytes 00 00000002 0801.
serving() {
  printf '\0\0\0\0\0' | curl -s --max-time 2 --data-binary @- \
    -H 'content-type: application/grpc-web+proto' "$URL/grpc.health.v1.Health/Check" |
    od -An -tx1 | tr -d ' \n' | grep -q '^00000000020801'
}
for _ in $(seq 1 60); do serving && break; sleep 0.5; done
serving || { echo "clients: $URL never reported SERVING" >&2; exit 1; }
echo "clients: custodia serving at $URL"

# --- the checks ------------------------------------------------------------------
passed=0 failed=0
check() {
  local name=$1
  shift
  printf '\n--- %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $name" >&2
  fi
}

export CUSTODIA_URL=$URL CUSTODIA_TOKEN=$CUSTODIA_ADMIN_TOKEN PYTHONPATH=$WORK
PY_EXAMPLE=examples/python/custodia_calls.py
check "python connectrpc, Connect JSON" timeout 120 python "$PY_EXAMPLE" --codec json
check "python connectrpc, Connect proto" timeout 120 python "$PY_EXAMPLE" --codec proto
check "python connectrpc, gRPC-Web" timeout 120 python "$PY_EXAMPLE" --protocol grpc-web --codec proto
check "php-cli with curl, Connect JSON" timeout 120 php examples/php/example.php

openapi() {
  local status
  status=$(curl -s -o "$WORK/openapi.json" -w '%{http_code}' "$URL/openapi.json")
  if [ "$status" != 200 ]; then
    echo "GET /openapi.json answered HTTP $status: the server does not serve its OpenAPI document" >&2
    return 1
  fi
  python - "$WORK/openapi.json" <<'EOF' || return 1
import json, sys
doc = json.load(open(sys.argv[1]))
assert doc.get("openapi", "").startswith("3.1"), f"openapi is {doc.get('openapi')!r}, not 3.1"
for path in ("/custodia.consent.v1.ConsentService/RecordConsent",
             "/custodia.consent.v1.ConsentService/CheckConsent",
             "/custodia.dsar.v1.DsarService/SubmitRequest"):
    assert path in doc.get("paths", {}), f"{path} is not in paths"
print(f"openapi {doc['openapi']}: {len(doc['paths'])} paths")
EOF
  openapi-spec-validator "$WORK/openapi.json"
}
check "GET /openapi.json validates (openapi-spec-validator)" openapi

if [ "$failed" -gt 0 ]; then
  printf '\nclients: the server log:\n' >&2
  tail -n 50 "$WORK/server.log" >&2
fi
printf '\nclients: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
