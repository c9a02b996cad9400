#!/usr/bin/env bash
# Generates the typed stubs (messages, .pyi types, gRPC stubs) for every
# discovery proto into src/discovery/v1 with grpcio-tools' protoc.
set -euo pipefail
cd "$(dirname "$0")"
python="${PYTHON:-python3}"
rm -rf src/discovery
"$python" -m grpc_tools.protoc -I ../../proto --python_out=src --pyi_out=src --grpc_python_out=src \
  ../../proto/discovery/v1/*.proto
touch src/discovery/__init__.py src/discovery/v1/__init__.py src/discovery/py.typed
