#!/usr/bin/env bash
# The whole test suite, with every peer it needs. Run from anywhere:
#
#   scripts/test.sh            # install missing peers, then cargo test
#   scripts/test.sh --lint     # also cargo fmt --check and clippy -D warnings
#
# Peers: Pebble + pebble-challtestsrv (Debian package `pebble`) for ACME,
# nginx for forward-auth behind auth_request, Node.js + the OIDC provider's
# npm dependencies for SSO, Chromium + chromedriver (Debian `chromium`,
# `chromium-driver`) for the browser tests. Missing ones are installed
# (apt-get as root, or via sudo).
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
command -v varnishtest >/dev/null 2>&1 || missing+=(varnish)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
{ command -v chromedriver && command -v chromium; } >/dev/null 2>&1 || missing+=(chromium chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing test peers: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

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
