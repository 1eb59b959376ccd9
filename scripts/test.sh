#!/usr/bin/env bash
# The whole test suite, with every peer it needs. Run from anywhere:
#
#   scripts/test.sh            # install missing peers, then cargo test
#   scripts/test.sh --lint     # also cargo fmt --check and clippy -D warnings
#
# Peers: Pebble + pebble-challtestsrv (Debian package `pebble`) for ACME,
# nginx for forward-auth behind auth_request, BIND 9 (`bind9`,
# `bind9-dnsutils`) as the DNS-01 tests' authoritative server, Node.js + the OIDC provider's
# npm dependencies for SSO, Chromium + chromedriver (Debian `chromium`,
# `chromium-driver`) for the browser tests, promtool and the Prometheus
# server (Debian `prometheus`) for the alert rules (unit-tested, and
# evaluated against live gateways) and Prometheus configs,
# check-jsonschema (PyPI, in a venv under target/, Debian `python3-venv`) for the compose files,
# Docker (`docker.io`: the tests start their own dockerd) and
# `busybox-static` (the containers' image) for label discovery, BIND
# (`bind9`, `bind9-dnsutils`) for DNS-01, and Python grpcio
# (`python3-grpcio`) for the gRPC-through-the-gateway tests, redis-server
# for the cluster tests, haproxy for the PROXY protocol tests, and
# debootstrap for the container image test (a Debian base made locally).
# Missing ones are installed (apt-get as root, or via sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

lint=0
[ "${1:-}" = "--lint" ] && lint=1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; exit 1
  fi
}

missing=()
command -v pebble >/dev/null 2>&1 || [ -x /usr/bin/pebble ] || missing+=(pebble)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v named >/dev/null 2>&1 || [ -x /usr/sbin/named ] || missing+=(bind9)
{ command -v nsupdate && command -v dig; } >/dev/null 2>&1 || missing+=(bind9-dnsutils)
/usr/bin/python3 -c "import grpc" >/dev/null 2>&1 || missing+=(python3-grpcio)
command -v varnishtest >/dev/null 2>&1 || missing+=(varnish)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
{ command -v chromedriver && command -v chromium; } >/dev/null 2>&1 || missing+=(chromium chromium-driver)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
{ command -v dockerd && command -v docker; } >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ] || missing+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
[ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
command -v curl >/dev/null 2>&1 || missing+=(curl)
/usr/bin/python3 -c 'import brotli' >/dev/null 2>&1 || missing+=(python3-brotli)
/usr/bin/python3 -c 'import zstandard' >/dev/null 2>&1 || missing+=(python3-zstandard)
command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing test peers: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> check-jsonschema (PyPI) in a venv, for the compose files"
venv="$(realpath -m "${CARGO_TARGET_DIR:-target}")/check-jsonschema-venv"
[ -x "$venv/bin/check-jsonschema" ] || {
  python3 -m venv "$venv" && "$venv/bin/pip" install -q check-jsonschema
}
export CHECK_JSONSCHEMA="$venv/bin/check-jsonschema"

echo "==> OIDC test provider dependencies (npm ci)"
(cd tests/peers/oidc && npm ci --no-audit --no-fund --loglevel=error)

if [ "$lint" = 1 ]; then
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
  echo "==> cargo clippy"
  cargo clippy --all-targets -- -D warnings
fi

echo "==> cargo test"
cargo test --all-targets --no-fail-fast
