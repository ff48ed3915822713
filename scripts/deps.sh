#!/usr/bin/env bash
# Install what the build and the tests need when it is missing (Debian/Ubuntu).
# Debian packages through apt-get, Python test clients through pip.
set -euo pipefail
PKGS=(build-essential pkg-config libmicrohttpd-dev libcjson-dev libsentencepiece-dev
      libcriterion-dev libpcre2-dev libcurl4-openssl-dev curl python3 python3-pip
      chromium chromium-driver)  # headless Chromium: the chat page test (tests/test_server_page.py)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "deps: Debian packages present"
fi
# Python clients used by the integration tests (real openai client, pytest,
# selenium to drive Chromium).
PY=${PYTHON:-python3}
if ! $PY -c 'import openai, pytest, selenium' 2>/dev/null; then
  echo "deps: pip installing openai pytest selenium"
  $PY -m pip install -q openai pytest selenium 2>/dev/null || $PY -m pip install -q --break-system-packages openai pytest selenium
fi
