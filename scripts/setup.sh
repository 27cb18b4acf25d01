#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for normshape: the Debian packages (Chromium for the
# browser tests, the Fashion-MNIST files) and a virtualenv with requirements.txt.
#   VENV=path   where the virtualenv goes (default: .venv in the repository)
#   NORMSHAPE_SKIP_APT=1   skip the Debian packages (e.g. no root and already installed)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ "${NORMSHAPE_SKIP_APT:-0}" != 1 ]; then
  need=()
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages: ${need[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
fi

stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating the virtualenv $VENV (torch and torchvision: a few GB, 1-3 minutes)"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
echo "setup: ready ($VENV)"
