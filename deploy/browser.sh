#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver (apt-get) when either is missing, for the
# dashboard's browser test (tests/tests/dashboard.rs drives chromedriver with WebDriver).
# Prints the path of chromedriver. Called by deploy/test.sh's package step.
set -euo pipefail

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    printf 'browser.sh: installing chromium and chromium-driver (apt-get)\n' >&2
    as_root apt-get update >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >&2
fi
command -v chromium >/dev/null 2>&1 || { printf 'browser.sh: chromium still missing\n' >&2; exit 1; }
command -v chromedriver
