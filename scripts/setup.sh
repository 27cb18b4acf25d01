#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for normshape: a virtualenv with normshape installed
# (editable) and its dependencies at the tested pins of requirements.txt.
#   bash scripts/setup.sh           what the app needs: the package and its runtime
#                                   dependencies, the Fashion-MNIST files (Debian package)
#   bash scripts/setup.sh --tests   also what the tests need: pytest and Playwright (the
#                                   [test] extra) and Debian's Chromium for the browser tests
# Environment:
#   VENV=path                where the virtualenv goes (default: .venv in the repository)
#   NORMSHAPE_TORCH=cpu      torch and torchvision from PyTorch's CPU wheel index: no CUDA
#                            libraries, about 4 GB less on disk (for machines without a GPU)
#   NORMSHAPE_SKIP_APT=1     skip the Debian packages (e.g. no root and already installed)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TESTS=0
for arg in "$@"; do
  case "$arg" in
    --tests) TESTS=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup: unknown option $arg (use --tests or nothing)" >&2; exit 2 ;;
  esac
done

if [ "${NORMSHAPE_SKIP_APT:-0}" != 1 ]; then
  need=()
  [ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
  [ "$TESTS" = 1 ] && { [ -x /usr/bin/chromium ] || need+=(chromium); }
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "setup: installing Debian packages: ${need[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
fi

extras=""; [ "$TESTS" = 1 ] && extras="[test]"
stamp="$VENV/.normshape-setup"
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
want="$want ${extras:-app} ${NORMSHAPE_TORCH:-default}"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  if [ "${NORMSHAPE_TORCH:-}" = cpu ]; then
    echo "setup: torch and torchvision from PyTorch's CPU wheel index"
    # shellcheck disable=SC2046  # the two pins, e.g. torch==2.15.0 torchvision==0.29.2
    "$VENV/bin/python" -m pip install -q --index-url https://download.pytorch.org/whl/cpu \
      $(grep -E '^(torch|torchvision)==' requirements.txt)
  fi
  echo "setup: installing normshape$extras into $VENV (torch: 1-3 minutes the first time)"
  # requirements.txt as constraints: only what normshape (and its extra) needs is installed,
  # each at its tested version.
  "$VENV/bin/python" -m pip install -qq -c requirements.txt -e ".$extras"
  echo "$want" > "$stamp"
fi
echo "setup: ready ($VENV)"
