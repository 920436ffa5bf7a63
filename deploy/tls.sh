#!/usr/bin/env bash
# Makes the certificates of a private test PKI for Chorus's TLS listeners (openssl), once per
# directory: an existing complete set is kept.
#
# Usage: deploy/tls.sh DIR
# Writes into DIR:
#   ca.pem, ca.key           the test CA
#   server.pem, server.key   the servers' certificate (127.0.0.1, localhost), signed by the CA
#   client.pem, client.key   a client certificate (CN chorus-client) for mutual TLS
#   other-ca.pem             an unrelated CA, for checking that a wrong CA is refused
# All keys are ECDSA P-256 (quick to make), valid for 30 days, readable by their owner only
# (services.sh runs the brokers as the same user).
set -euo pipefail

[[ $# -eq 1 && -n "$1" ]] || {
    echo "usage: deploy/tls.sh DIR" >&2
    exit 2
}
DIR="$1"
mkdir -p "$DIR"
cd "$DIR"

FILES=(ca.pem ca.key server.pem server.key client.pem client.key other-ca.pem)
complete=1
for f in "${FILES[@]}"; do [[ -s "$f" ]] || complete=0; done
((complete)) && exit 0

command -v openssl >/dev/null 2>&1 || {
    echo "tls.sh: openssl is missing (apt-get install openssl)" >&2
    exit 1
}

umask 077
KEY=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

# A CA: self-signed, allowed to sign certificates.
make_ca() { # name cn
    openssl req -x509 "${KEY[@]}" -days 30 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$1.key" -out "$1.pem" 2>/dev/null
}

# A leaf signed by the CA, with the given extensions.
make_leaf() { # name cn extensions
    openssl req "${KEY[@]}" -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}

make_ca ca "Chorus test CA"
make_ca other-ca "Unrelated test CA"
rm -f other-ca.key
make_leaf server "chorus-test-server" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost"
make_leaf client "chorus-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca.srl
