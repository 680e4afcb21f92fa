{{- /*
The settings each service gets from its ConfigMap, as `AUSCULT__…` keys: what the chart sets, then the
component's extraSettings. A key the chart sets, or wires to the pods from a Secret or the downward API, may not
also come from extraSettings: the ConfigMap would hold it twice and the pod would get one of two values silently.
*/ -}}

{{- define "auscult.ingest.settings" -}}
AUSCULT__DATABASE__POOL_SIZE: {{ .Values.ingest.database.poolSize | quote }}
# Lowered from the service default (256 MiB) so that the frames in flight fit the memory limit.
AUSCULT__FLOW__MAX_INFLIGHT_BYTES: {{ .Values.ingest.flow.maxInflightBytes | int64 | quote }}
# With 256 KiB HTTP/2 windows, what unread frames may take beside those in flight.
AUSCULT__FLOW__MAX_CONNECTIONS: {{ .Values.ingest.flow.maxConnections | quote }}
AUSCULT__SHUTDOWN_GRACE: "{{ .Values.ingest.shutdownGraceSeconds }}s"
{{- if .Values.ingest.tls.enabled }}
AUSCULT__TLS__CERT_PATH: /etc/auscult/tls/tls.crt
AUSCULT__TLS__KEY_PATH: /etc/auscult/tls/tls.key
{{- if .Values.ingest.tls.clientCA.enabled }}
AUSCULT__TLS__CLIENT_CA_PATH: /etc/auscult/client-ca/{{ .Values.ingest.tls.clientCA.key }}
{{- end }}
{{- end }}
{{- end }}

{{- define "auscult.analysis.settings" -}}
AUSCULT__DATABASE__POOL_SIZE: {{ .Values.analysis.database.poolSize | quote }}
# Scoring threads match the CPU limit (analysis.scoring.workers: null derives it).
AUSCULT__SCORING__WORKERS: {{ include "auscult.analysis.workers" . | quote }}
AUSCULT__SCORING__QUEUE_DEPTH: {{ .Values.analysis.scoring.queueDepth | quote }}
AUSCULT__SHUTDOWN_GRACE: "{{ .Values.analysis.shutdownGraceSeconds }}s"
{{- end }}

{{- define "auscult.listener.settings" -}}
{{- $es := .Values.elasticsearch }}
{{- $l := .Values.listener }}
{{- $rule := $l.alerts -}}
# Pool: at least jobs.concurrency + 2, plus elastic.concurrency + 1 when indexing (checked at render time).
AUSCULT__DATABASE__POOL_SIZE: {{ $l.database.poolSize | quote }}
AUSCULT__JOBS__CONCURRENCY: {{ $l.jobs.concurrency | quote }}
# The headless Service resolves to every ready analysis pod; the listener balances across them itself.
AUSCULT__ANALYSIS__ENDPOINTS: "http://{{ include "auscult.fullname" . }}-analysis-headless:50052"
AUSCULT__ANALYSIS__RESOLVE_INTERVAL: {{ $l.analysis.resolveInterval | quote }}
AUSCULT__SHUTDOWN_GRACE: "{{ $l.shutdownGraceSeconds }}s"
# The alert rule: fire when fireAt of a sensor's last `window` clip verdicts are anomalous.
AUSCULT__ALERTS__FIRE_AT: {{ $rule.fireAt | quote }}
AUSCULT__ALERTS__WINDOW: {{ $rule.window | quote }}
AUSCULT__ALERTS__CLEAR_AT: {{ $rule.clearAt | quote }}
{{- if $es.enabled }}
AUSCULT__ELASTIC__URLS: {{ include "auscult.elasticsearch.urls" . | quote }}
AUSCULT__ELASTIC__REPLICAS: {{ $es.indexReplicas | quote }}
AUSCULT__ELASTIC__CONCURRENCY: {{ $l.elastic.concurrency | quote }}
{{- if include "auscult.elasticsearch.caSecret" . }}
AUSCULT__ELASTIC__CA_PATH: /etc/auscult/elastic-ca/ca.crt
{{- end }}
{{- end }}
{{- end }}

{{- /* A ConfigMap's data: (dict "root" $ "component" NAME "extra" MAP). */ -}}
{{- define "auscult.settingsData" -}}
{{- $own := include (printf "auscult.%s.settings" .component) .root }}
{{- $set := fromYaml $own }}
{{- $wired := list "AUSCULT__DATABASE__URL" "AUSCULT__INSTANCE" "AUSCULT__ALERTS__WEBHOOKS" "AUSCULT__ELASTIC__USERNAME" "AUSCULT__ELASTIC__PASSWORD" "AUSCULT__ELASTIC__API_KEY" }}
{{- range $name, $value := .extra }}
{{- if or (hasKey $set $name) (has $name $wired) }}
{{- fail (printf "%s.extraSettings sets %s, which the chart sets itself: use the chart's own value for it (values.yaml)" $.component $name) }}
{{- end }}
{{- end }}
{{- $own }}
{{- range $name, $value := .extra }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end }}
