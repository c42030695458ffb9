#!/bin/sh
# Installs Debian's headless Chromium and poppler-utils (pdftotext, pdftoppm) for
# tests/test_report_browser.py (the HTML report check and the printed sign-off page).
# Idempotent; needs root (or sudo) and apt. Without them those tests skip with the reason.
set -eu
if command -v chromium >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1; then
    echo "chromium and poppler-utils already installed: $(command -v chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-browser: not root and no sudo; install Debian's 'chromium' and 'poppler-utils' yourself" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core poppler-utils
echo "installed $(command -v chromium)"
