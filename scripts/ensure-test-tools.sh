#!/usr/bin/env bash
# What the tests need beyond the Docker engine: Debian's Chromium, driven headless by
# Playwright (whose own browser download cannot work without internet access).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (headless browser checks of the HTML report) ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: /usr/bin/chromium is missing; the report's browser test will fail (apt-get install chromium)" >&2
  fi
fi
