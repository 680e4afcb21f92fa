#!/usr/bin/env bash
# Elasticsearch security for the compose stack, as Elastic's own compose example sets it up, in two
# one-shot steps (each its own service, so that every dependency waits on a completed step):
#
#   setup.sh certs       a certificate authority and the node's certificate (HTTPS and transport) in the
#                        shared `elastic-certs` volume; existing ones are kept
#   setup.sh passwords   once Elasticsearch answers, the password of the built-in `kibana_system` user
#                        that Kibana signs in with; fails, saying why, when Elasticsearch refuses it
set -euo pipefail

certs=config/certs

make_certificates() {
    if [ ! -f "$certs/ca.zip" ]; then
        echo "creating the certificate authority"
        bin/elasticsearch-certutil ca --silent --pem --out "$certs/ca.zip"
        unzip -q "$certs/ca.zip" -d "$certs"
    fi
    if [ ! -f "$certs/certs.zip" ]; then
        echo "creating the node certificate"
        cat > "$certs/instances.yml" <<'YAML'
instances:
  - name: elasticsearch
    dns: [elasticsearch, localhost]
    ip: [127.0.0.1]
YAML
        bin/elasticsearch-certutil cert --silent --pem --in "$certs/instances.yml" \
            --out "$certs/certs.zip" --ca-cert "$certs/ca/ca.crt" --ca-key "$certs/ca/ca.key"
        unzip -q "$certs/certs.zip" -d "$certs"
    fi
    # Elasticsearch and Kibana run as uid 1000 in group 0 and read the key through the group; the auscult
    # containers (uid 65532) read the CA certificate only.
    chown -R root:root "$certs"
    find "$certs" -type d -exec chmod 0755 {} +
    find "$certs" -type f -exec chmod 0640 {} +
    chmod 0644 "$certs/ca/ca.crt"
    echo "certificates ready"
}

set_passwords() {
    : "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD must be set}"
    : "${KIBANA_PASSWORD:?KIBANA_PASSWORD must be set}"
    local body answer attempt
    body="$(printf '{"password":"%s"}' "$KIBANA_PASSWORD")"
    for attempt in $(seq 1 30); do
        # Elasticsearch is healthy before this runs; retries cover it settling (e.g. the security index).
        answer="$(curl -s -X POST --cacert "$certs/ca/ca.crt" -u "elastic:${ELASTIC_PASSWORD}" \
            -H "Content-Type: application/json" \
            https://elasticsearch:9200/_security/user/kibana_system/_password -d "$body" || true)"
        if [ "$answer" = "{}" ]; then
            echo "kibana_system password set"
            return 0
        fi
        case "$answer" in
            *'"status":400'*|*'"status":401'*|*'"status":403'*)
                echo "Elasticsearch refused: $answer" >&2
                return 1 ;;
        esac
        echo "attempt $attempt: ${answer:-no answer}; retrying"
        sleep 2
    done
    echo "could not set the kibana_system password" >&2
    return 1
}

case "${1:-}" in
    certs) make_certificates ;;
    passwords) set_passwords ;;
    *) echo "usage: setup.sh certs|passwords" >&2; exit 2 ;;
esac
