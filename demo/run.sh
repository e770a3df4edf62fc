#!/usr/bin/env bash
# One command on a fresh Python 3.11 machine: install, train the demo, serve TensorBoard.
#   bash demo/run.sh [LOGDIR] [PORT]
# Then open http://127.0.0.1:PORT/#bn_internals (default port 6006).
set -euo pipefail
cd "$(dirname "$0")/.."
LOGDIR="${1:-runs/demo}"
PORT="${2:-6006}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m pip install --quiet --upgrade pip
"$PYTHON" -m pip install --quiet -e '.[tensorflow]'
"$PYTHON" demo/train.py --logdir "$LOGDIR"
echo "Serving TensorBoard on http://127.0.0.1:${PORT}/#bn_internals (Ctrl-C to stop)"
exec "$PYTHON" -m tensorboard.main --logdir "$LOGDIR" --host 127.0.0.1 --port "$PORT"
