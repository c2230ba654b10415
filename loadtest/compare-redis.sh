#!/usr/bin/env bash
# omniroute against Redis, side by side, on this machine: installs
# redis-server (Debian package) when missing, then runs the flash sale with
# --find-max on both and ends with ratio_vs_redis=X.
# Usage: loadtest/compare-redis.sh [SCENARIO] [extra generator options]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
fi
scenario="${1:-loadtest/scenarios/flash-sale.toml}"
shift || true
exec cargo run --release -p omniroute-loadtest -- --spawn-server --scenario "$scenario" \
    --duration 20s --find-max --compare-redis --json out.json --chart out.svg "$@"
