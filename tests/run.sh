#!/usr/bin/env bash
# The whole test suite, from a fresh Python 3.11 machine:
#   bash tests/run.sh [pytest args...]
# Installs the package with its test extras, JAX (CPU) and the CPU build of PyTorch for the
# backend tests (tests/training/test_backends.py runs them in subprocesses with KERAS_BACKEND
# set) and, when running as root on Debian, the system Chromium used by the browser tests
# (never a downloaded browser).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install --quiet -e '.[test]'
# torch's CPU-only wheel (about 190 MB; a plain "torch" pulls about 3 GB of CUDA libraries).
"$PYTHON" -m pip install --quiet jax "torch==2.13.0+cpu"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# Playwright must drive the system browser only.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
export TF_CPP_MIN_LOG_LEVEL=2

set +e
"$PYTHON" -m pytest tests -q -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "tests/run.sh: pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
