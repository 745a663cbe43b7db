#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser.py). Playwright's own browser
# download cannot be used: only the package registries are reachable.
set -euo pipefail
# GitHub's hosted Ubuntu runners already have Google Chrome (tests/browser.py uses either).
if [ -x /usr/bin/chromium ] || [ -x /usr/bin/google-chrome ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
/usr/bin/chromium --version
