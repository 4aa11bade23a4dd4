#!/bin/sh
# Makes what the compose stack's secured scrape needs, in DIR (default: tls/ beside this
# script): a CA, the daemon's certificate (for the names `observer`, `localhost`, 127.0.0.1),
# Prometheus' client certificate, a random basic-auth password and the daemon's web
# configuration (exporter-toolkit's format). Needs openssl and htpasswd (apache2-utils).
#   deploy/compose/make-certs.sh && docker compose -f deploy/compose/compose.yaml up
set -eu
dir=${1:-$(dirname "$0")/tls}
mkdir -p "$dir"
cd "$dir"
for tool in openssl htpasswd; do
    command -v $tool >/dev/null || { echo "make-certs.sh: $tool is needed (apt install openssl apache2-utils)" >&2; exit 1; }
done
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=observer compose CA" -out ca.crt
# sign NAME SUBJECT EXTENSIONS: a key and a certificate the CA signed, for a year.
sign() {
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
    printf '%b\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm "$1.csr" "$1.ext"
}
sign server /CN=observer \
    'subjectAltName=DNS:observer,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth'
sign client /CN=prometheus 'subjectAltName=DNS:prometheus\nextendedKeyUsage=clientAuth'
openssl rand -hex 16 > password
hash=$(htpasswd -nbBC 10 "" "$(cat password)" | tr -d ':\n')
cat > web.yml <<WEB
# observer's web configuration (--web-config-file): TLS, client certificates from ca.crt
# only, and basic auth. Paths are relative to this file.
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
basic_auth_users:
  prometheus: '$hash'
WEB
# Readable by the containers' users (Prometheus runs as nobody); the CA's key only by its
# owner.
chmod 644 ./*
chmod 600 ca.key
echo "made $(pwd): ca.crt, server.crt/key, client.crt/key, password, web.yml"
