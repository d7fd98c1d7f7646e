#!/usr/bin/env bash
# Regenerates the agent's gRPC modules from agent/proto/exray_agent.proto.
#   scripts/gen_proto.sh [OUT_DIR]     (default: agent/proto, where they are checked in)
# tests/test_agent_proto.py runs it into a temporary folder and compares.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/agent/proto}
py=${PYTHON:-$here/.venv/bin/python}
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$here/agent/proto" --python_out="$out" --grpc_python_out="$out" \
  "$here/agent/proto/exray_agent.proto"
# protoc writes `import exray_agent_pb2`; make it a package-relative import.
sed -i 's/^import exray_agent_pb2 as /from . import exray_agent_pb2 as /' "$out/exray_agent_pb2_grpc.py"
