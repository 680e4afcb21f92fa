#!/usr/bin/env bash
# One-shot set-up of Elasticsearch security for the compose stack, as Elastic's own compose example
# does it: a certificate authority and a certificate for the node (HTTPS and transport), written to
# the shared `elastic-certs` volume; then, once the node answers, the password of the built-in
# `kibana_system` user that Kibana signs in with. Idempotent: existing certificates are kept.
set -euo pipefail

: "${ELASTIC_PASSWORD:?ELASTIC_PASSWORD must be set}"
: "${KIBANA_PASSWORD:?KIBANA_PASSWORD must be set}"
certs=config/certs

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
# Elasticsearch and Kibana run as uid 1000; the auscult containers (uid 65532) read the CA only.
chown -R root:root "$certs"
find "$certs" -type d -exec chmod 0755 {} +
find "$certs" -type f -exec chmod 0640 {} +
chmod 0644 "$certs/ca/ca.crt"

echo "waiting for Elasticsearch"
until curl -s --cacert "$certs/ca/ca.crt" https://elasticsearch:9200 | grep -q "missing authentication credentials"; do
    sleep 5
done
echo "setting the kibana_system password"
until curl -s -X POST --cacert "$certs/ca/ca.crt" -u "elastic:${ELASTIC_PASSWORD}" \
        -H "Content-Type: application/json" https://elasticsearch:9200/_security/user/kibana_system/_password \
        -d "{\"password\":\"${KIBANA_PASSWORD}\"}" | grep -q "^{}"; do
    sleep 5
done
echo "Elasticsearch security is set up"
