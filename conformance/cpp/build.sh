#!/usr/bin/env bash
# Generates C++ from proto/ with protoc + grpc_cpp_plugin and builds the scenario.
# Usage: build.sh OUTPUT_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto="$here/../../proto"
out=$1
mkdir -p "$out/gen"
messages=(cooperation/v1/common.proto cooperation/v1/party.proto cooperation/v1/agreement.proto
  cooperation/v1/partnership_domain.proto cooperation/v1/engagement.proto cooperation/v1/change.proto
  google/api/field_behavior.proto google/api/field_info.proto google/api/resource.proto google/api/client.proto
  google/api/launch_stage.proto google/type/date.proto google/rpc/status.proto google/rpc/error_details.proto)
services=(cooperation/v1/agreement.proto cooperation/v1/change.proto cooperation/v1/party.proto
  cooperation/v1/partnership_domain.proto cooperation/v1/engagement.proto)
(cd "$proto" && protoc -I . --cpp_out="$out/gen" "${messages[@]}")
(cd "$proto" && protoc -I . --grpc_out="$out/gen" --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" "${services[@]}")
sources=()
for f in "${messages[@]}"; do sources+=("$out/gen/${f%.proto}.pb.cc"); done
for f in "${services[@]}"; do sources+=("$out/gen/${f%.proto}.grpc.pb.cc"); done
sources+=("$here/scenario.cc")
flags=$(pkg-config --cflags grpc++ protobuf)
# One object per source, two at a time (the machines have two cores).
printf '%s\n' "${sources[@]}" | xargs -P 2 -I{} sh -c \
  'g++ -std=c++17 -O0 -I "$1/gen" $2 -c "$3" -o "$1/$(basename "$3").o"' _ "$out" "$flags" {}
# shellcheck disable=SC2046
g++ "$out"/*.o -o "$out/scenario" $(pkg-config --libs grpc++ protobuf)
