#!/bin/sh
# Make sure Debian's headless-capable Chromium is installed (tests/report renders the HTML report in it).
# Used by `make test`; a no-op when /usr/bin/chromium (or $CHROMIUM) already exists.
set -eu
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: $CHROMIUM is missing and apt-get is not available;" \
         "install Chromium and set CHROMIUM=/path/to/chromium (tests/report needs it)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "ensure-chromium: run as root (or install sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi
echo "ensure-chromium: installing Debian's chromium (needed by tests/report)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x "$CHROMIUM"
