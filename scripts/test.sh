#!/usr/bin/env bash
# Sets everything up if needed, then runs the whole test suite.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/setup.sh"
cd "$here"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
