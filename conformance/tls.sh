#!/usr/bin/env bash
# TLS, mutual TLS and tokens with real clients: grpcurl (-cacert, -cert/-key,
# a bearer token header) and Python (grpc.ssl_channel_credentials), against the
# binary serving with certificates made here by openssl.
# Usage: tls.sh BINARY WORK_DIR
set -euo pipefail
binary=$1
work=$2/tls
mkdir -p "$work"
cd "$work"

ext() { printf '%s\n' "$@" > "$work/ext.cnf"; echo "$work/ext.cnf"; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -subj "/CN=Conformance CA" -days 2 2>/dev/null
issue() { # name subject extension...
  local name=$1 subject=$2; shift 2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" -out "$name.csr" \
    -subj "$subject" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" -days 2 \
    -extfile "$(ext "$@")" 2>/dev/null
}
issue server "/CN=registry" "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE"
issue python "/CN=python-client" "basicConstraints=CA:FALSE"
issue grpcurl "/CN=grpcurl-client" "basicConstraints=CA:FALSE"

reader_token=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
{
  echo "subject writer CN=python-client"
  echo "token reader-bot reader $(printf '%s' "$reader_token" | "$binary" hash-token)"
} > access

RUST_LOG=info "$binary" serve --listen 127.0.0.1:0 --data-dir "$work/data" --tls-cert server.pem --tls-key server.key \
  --tls-client-ca ca.pem --access-file access 2>server.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  port=$(sed -n 's/.*serving cooperation.v1 address=127.0.0.1:\([0-9]*\).*/\1/p' server.log)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat server.log; exit 1; }
target=localhost:$port
fail() { echo "tls: $*"; exit 1; }

# grpcurl with the CA and a client certificate: reflection and health are open.
grpcurl -cacert ca.pem -cert grpcurl.pem -key grpcurl.key "$target" list >/dev/null || fail "grpcurl over mTLS could not list"
grpcurl -cacert ca.pem -cert grpcurl.pem -key grpcurl.key "$target" grpc.health.v1.Health/Check >/dev/null || fail "health"
# Its certificate has no role: PERMISSION_DENIED (exit 64 + 7) ...
set +e
grpcurl -cacert ca.pem -cert grpcurl.pem -key grpcurl.key "$target" cooperation.v1.AgreementService/ListAgreements >/dev/null 2>&1
code=$?
set -e
[ "$code" = 71 ] || fail "a certificate without a role got exit $code, expected 71 (PERMISSION_DENIED)"
# ... a reader token reads but cannot write ...
grpcurl -cacert ca.pem -cert grpcurl.pem -key grpcurl.key -H "authorization: Bearer $reader_token" \
  "$target" cooperation.v1.AgreementService/ListAgreements >/dev/null || fail "a reader token could not list"
set +e
out=$(grpcurl -cacert ca.pem -cert grpcurl.pem -key grpcurl.key -H "authorization: Bearer $reader_token" \
  -d '{"agreement": {"title": "x", "parties": ["parties/ind", "parties/jpn"]}}' \
  "$target" cooperation.v1.AgreementService/CreateAgreement 2>&1)
code=$?
set -e
[ "$code" = 71 ] || fail "a reader token could create (exit $code)"
case "$out" in *"$reader_token"*) fail "an error echoed the token";; esac
# ... and without a client certificate there is no connection, nor in plaintext.
if grpcurl -cacert ca.pem "$target" list >/dev/null 2>&1; then fail "served a client without a certificate"; fi
if grpcurl -plaintext "$target" list >/dev/null 2>&1; then fail "served plaintext"; fi

# Python with grpc.ssl_channel_credentials and a writer certificate; the change
# log names the certificate's subject.
python3 - "$target" "$GENERATED_PYTHON" <<'PY'
import sys
sys.path.insert(0, sys.argv[2])
import grpc
from cooperation.v1 import agreement_pb2, agreement_pb2_grpc, change_pb2, change_pb2_grpc
read = lambda name: open(name, "rb").read()
credentials = grpc.ssl_channel_credentials(read("ca.pem"), read("python.key"), read("python.pem"))
channel = grpc.secure_channel(sys.argv[1], credentials)
created = agreement_pb2_grpc.AgreementServiceStub(channel).CreateAgreement(agreement_pb2.CreateAgreementRequest(
    agreement_id="over-tls", agreement=agreement_pb2.Agreement(title="Over TLS", parties=["parties/ind", "parties/jpn"])))
history = change_pb2_grpc.ChangeServiceStub(channel).ListRevisions(change_pb2.ListRevisionsRequest(name=created.name))
actor = history.revisions[0].actor
if actor != "cert:CN=python-client":
    sys.exit(f"tls: the change names {actor!r}, not the certificate's subject")
print("tls: python over mutual TLS created", created.name, "as", actor)
PY
if grep -q "$reader_token" server.log; then fail "the server log holds a token"; fi
echo "tls: grpcurl and python over TLS and mutual TLS behaved as documented"
