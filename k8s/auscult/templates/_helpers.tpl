{{/* ===================================================================================================
     Names and labels
     =================================================================================================== */}}

{{/* Chart name, overridable. */}}
{{- define "auscult.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name. Kept at 40 characters so that suffixes such as
     "-analysis-headless" and the operators' own suffixes ("-es-http-certs-public") stay within 63. */}}
{{- define "auscult.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "auscult.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select one component's pods. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "auscult.selectorLabels" -}}
app.kubernetes.io/name: {{ include "auscult.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every label of a resource of one component. Call with (dict "root" $ "component" "ingest"). */}}
{{- define "auscult.labels" -}}
helm.sh/chart: {{ include "auscult.chart" .root }}
{{ include "auscult.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: auscult
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Components whose pods are auscult processes: what the default-deny NetworkPolicy applies to. The
     operator-managed PostgreSQL and Elastic pods are not among them (their operators must reach them). */}}
{{- define "auscult.podComponents" -}}
{{- list "ingest" "analysis" "listener" "migrate" "model-publish" "elastic-setup" "kibana-import" "test" | toJson }}
{{- end }}

{{- define "auscult.releasePodSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "auscult.name" . }}
  app.kubernetes.io/instance: {{ .Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values:
      {{- range include "auscult.podComponents" . | fromJsonArray }}
      - {{ . }}
      {{- end }}
{{- end }}

{{- define "auscult.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "auscult.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest when a digest is given, repository:tag otherwise. */}}
{{- define "auscult.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* ===================================================================================================
     The services: ports, binaries and gRPC health service names
     =================================================================================================== */}}

{{- define "auscult.grpcPort" -}}
{{- get (dict "ingest" 50051 "analysis" 50052 "listener" 50053) . }}
{{- end }}

{{- define "auscult.adminPort" -}}
{{- get (dict "ingest" 9464 "analysis" 9465 "listener" 9466) . }}
{{- end }}

{{/* The gRPC health service that is SERVING when the component can do its work (readiness). The empty
     service name "" is SERVING while the process runs (liveness). */}}
{{- define "auscult.readinessService" -}}
{{- get (dict "ingest" "auscult.ingest.v1.Ingest" "analysis" "auscult.analysis.v1.Analysis" "listener" "auscult.listener.v1.Listener") . }}
{{- end }}

{{/* terminationGracePeriodSeconds, derived from the drain time so the kubelet never kills a draining
     process: preStop sleep + shutdown_grace + margin. Call with a component's values. */}}
{{- define "auscult.terminationGracePeriodSeconds" -}}
{{- add .preStopSleepSeconds .shutdownGraceSeconds .terminationMarginSeconds }}
{{- end }}

{{/* Scoring threads of analysis: the explicit value, or the CPU limit rounded up ("2" → 2, "1500m" → 2),
     or 0 (one per CPU the process sees) without a CPU limit. */}}
{{- define "auscult.analysis.workers" -}}
{{- $workers := .Values.analysis.scoring.workers }}
{{- if kindIs "invalid" $workers }}
{{- $cpu := "" }}
{{- with .Values.analysis.resources.limits }}{{ $cpu = toString (default "" .cpu) }}{{ end }}
{{- if eq $cpu "" }}
{{- 0 }}
{{- else if hasSuffix "m" $cpu }}
{{- div (add (trimSuffix "m" $cpu | atoi) 999) 1000 | max 1 }}
{{- else }}
{{- ceil (float64 $cpu) | int | max 1 }}
{{- end }}
{{- else }}
{{- $workers }}
{{- end }}
{{- end }}

{{/* ===================================================================================================
     PostgreSQL
     =================================================================================================== */}}

{{- define "auscult.postgresql.clusterName" -}}
{{- printf "%s-pg" (include "auscult.fullname" .) }}
{{- end }}

{{/* Secret and key holding the database URL: CNPG's "<cluster>-app" Secret (key "uri", the -rw Service,
     i.e. the primary, in session mode) or the external one. */}}
{{- define "auscult.postgresql.secretName" -}}
{{- if .Values.postgresql.bundled }}
{{- printf "%s-app" (include "auscult.postgresql.clusterName" .) }}
{{- else }}
{{- required "postgresql.external.existingSecret is required when postgresql.bundled is false" .Values.postgresql.external.existingSecret }}
{{- end }}
{{- end }}

{{- define "auscult.postgresql.secretKey" -}}
{{- if .Values.postgresql.bundled }}uri{{ else }}{{ .Values.postgresql.external.key }}{{ end }}
{{- end }}

{{/* One env entry with the database URL under the given name (AUSCULT__DATABASE__URL for the services,
     DATABASE_URL for the CLI). Call with (dict "root" $ "name" "DATABASE_URL"). */}}
{{- define "auscult.databaseUrlEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "auscult.postgresql.secretName" .root }}
      key: {{ include "auscult.postgresql.secretKey" .root }}
{{- end }}

{{/* Whether the migration and model Jobs run as pre-install/pre-upgrade hooks ("true") or as plain Jobs
     ("").

     A pre-install hook runs before any release resource exists. When the chart itself creates the
     CloudNativePG Cluster, the database would not exist yet and the hook would wait in vain. So on the first
     install with the bundled cluster the Jobs are plain Jobs, created together with the Cluster, named after
     the release revision; the service pods wait for the schema in their init container
     (`auscult migrate --check`). On every upgrade, and always with an external database, the database exists
     before the release changes, so the Jobs are hooks and the new pods only start once the schema is
     migrated. */}}
{{- define "auscult.migrationsAreHooks" -}}
{{- if or (not .Values.postgresql.bundled) (not .Release.IsInstall) }}true{{ end }}
{{- end }}

{{/* Init container of every pod that needs the schema: waits (without migrating) until the database holds
     the schema version this image expects. Immediate when the pre-install/pre-upgrade hook already ran; on
     the first install with the bundled cluster it waits for the migration Job. */}}
{{- define "auscult.waitForSchemaInitContainer" -}}
- name: wait-for-schema
  image: {{ include "auscult.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - auscult
    - migrate
    - --check
    - --wait-for-database
    - {{ .Values.migrations.checkTimeout | quote }}
  env:
    {{- include "auscult.databaseUrlEnv" (dict "root" . "name" "DATABASE_URL") | nindent 4 }}
    {{- include "auscult.logEnv" . | nindent 4 }}
  resources:
    {{- toYaml .Values.jobResources | nindent 4 }}
  securityContext:
    {{- include "auscult.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* ===================================================================================================
     Elasticsearch and Kibana
     =================================================================================================== */}}

{{- define "auscult.elasticsearch.name" -}}
{{- include "auscult.fullname" . }}
{{- end }}

{{- define "auscult.kibana.name" -}}
{{- include "auscult.fullname" . }}
{{- end }}

{{/* "true" when Kibana is in use: it needs Elasticsearch. */}}
{{- define "auscult.kibana.enabled" -}}
{{- if and .Values.elasticsearch.enabled .Values.kibana.enabled }}true{{ end }}
{{- end }}

{{/* Comma-separated URLs of the Elasticsearch nodes: ECK's HTTP Service, or the external list. */}}
{{- define "auscult.elasticsearch.urls" -}}
{{- if .Values.elasticsearch.bundled }}
{{- printf "https://%s-es-http.%s.svc:9200" (include "auscult.elasticsearch.name" .) .Release.Namespace }}
{{- else }}
{{- if not .Values.elasticsearch.external.urls }}
{{- fail "elasticsearch.external.urls is required when elasticsearch.bundled is false" }}
{{- end }}
{{- join "," .Values.elasticsearch.external.urls }}
{{- end }}
{{- end }}

{{/* Secret and key of the CA that signed Elasticsearch's HTTP certificate ("" when none is configured). */}}
{{- define "auscult.elasticsearch.caSecret" -}}
{{- if .Values.elasticsearch.bundled }}
{{- printf "%s-es-http-certs-public" (include "auscult.elasticsearch.name" .) }}
{{- else }}
{{- .Values.elasticsearch.external.ca.existingSecret }}
{{- end }}
{{- end }}

{{- define "auscult.elasticsearch.caKey" -}}
{{- if .Values.elasticsearch.bundled }}ca.crt{{ else }}{{ .Values.elasticsearch.external.ca.key }}{{ end }}
{{- end }}

{{- define "auscult.kibana.url" -}}
{{- if .Values.kibana.bundled }}
{{- printf "https://%s-kb-http.%s.svc:5601" (include "auscult.kibana.name" .) .Release.Namespace }}
{{- else }}
{{- required "kibana.external.url is required when kibana.bundled is false" .Values.kibana.external.url }}
{{- end }}
{{- end }}

{{- define "auscult.kibana.caSecret" -}}
{{- if .Values.kibana.bundled }}
{{- printf "%s-kb-http-certs-public" (include "auscult.kibana.name" .) }}
{{- else }}
{{- .Values.kibana.external.ca.existingSecret }}
{{- end }}
{{- end }}

{{- define "auscult.kibana.caKey" -}}
{{- if .Values.kibana.bundled }}ca.crt{{ else }}{{ .Values.kibana.external.ca.key }}{{ end }}
{{- end }}

{{/* Elasticsearch credentials as env entries. Call with (dict "root" $ "prefix" "AUSCULT__ELASTIC__") for
     the listener or (dict "root" $ "prefix" "ELASTIC_") for the CLI. Bundled cluster without an explicit
     Secret: ECK's `elastic` user. */}}
{{- define "auscult.elasticsearch.authEnv" -}}
{{- $es := .root.Values.elasticsearch }}
{{- if and $es.bundled (not $es.auth.existingSecret) }}
- name: {{ .prefix }}USERNAME
  value: elastic
- name: {{ .prefix }}PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "auscult.elasticsearch.name" .root }}-es-elastic-user
      key: elastic
{{- else }}
{{- $secret := required "elasticsearch.auth.existingSecret is required with an external Elasticsearch" $es.auth.existingSecret }}
{{- if eq $es.auth.method "apiKey" }}
- name: {{ .prefix }}API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $es.auth.apiKeyKey }}
{{- else }}
- name: {{ .prefix }}USERNAME
  value: {{ $es.auth.username | quote }}
- name: {{ .prefix }}PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $es.auth.passwordKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* ===================================================================================================
     Pods
     =================================================================================================== */}}

{{/* The restricted Pod Security Standard, pod level. */}}
{{- define "auscult.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted Pod Security Standard, container level; the root filesystem is read-only (/tmp is an
     emptyDir). */}}
{{- define "auscult.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "auscult.logEnv" -}}
- name: RUST_LOG
  value: {{ .Values.log.filter | quote }}
- name: AUSCULT_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- if .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.tracing.otlpEndpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .Values.tracing.sampleRatio | quote }}
{{- end }}
{{- end }}

{{/* Scheduling of a service's pods. Call with (dict "root" $ "component" "ingest" "values" .Values.ingest).

     Spreading: a topologySpreadConstraint over kubernetes.io/hostname (maxSkew 1, per ReplicaSet through
     matchLabelKeys pod-template-hash, so the surge pod of a rollout is not counted against the old ones).

     Anti-affinity defaults to *preferred*. With 3 replicas on a 3-node pool, `required` anti-affinity leaves
     the surge pod of a rolling update (maxSurge 1, maxUnavailable 0) unschedulable: every node already runs a
     replica, so the rollout would never progress, and a drained node's replica would stay Pending until the
     node returns. The DoNotSchedule spread constraint already keeps ingest and listener replicas on distinct
     nodes whenever the nodes exist, while tolerating the one extra pod of a surge; preferred anti-affinity
     adds a scoring push towards empty nodes (also for analysis, whose spread is only ScheduleAnyway). */}}
{{- define "auscult.scheduling" -}}
{{- $selector := include "auscult.selectorLabels" (dict "root" .root "component" .component) }}
topologySpreadConstraints:
  - maxSkew: {{ .values.topologySpread.maxSkew }}
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: {{ .values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- $selector | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
affinity:
  podAntiAffinity:
    {{- if eq .values.podAntiAffinity "required" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- $selector | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- $selector | nindent 14 }}
    {{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* gRPC probes of a service. Call with (dict "component" "ingest" "httpProbes" false).
     startup: up to 5 minutes for the process to answer at all; readiness: the component's own health service
     (database reachable with the expected schema, model active, notification connection up);
     liveness: the empty service name, SERVING while the process runs, so a lost database never restarts
     pods (it only takes them out of rotation).
     With httpProbes (ingest serving TLS: the kubelet's gRPC probes speak plaintext only), the admin port's
     /livez and /readyz are used instead. */}}
{{- define "auscult.probes" -}}
{{- $grpc := include "auscult.grpcPort" .component | int }}
{{- $admin := include "auscult.adminPort" .component | int }}
{{- $service := include "auscult.readinessService" .component }}
{{- if .httpProbes }}
startupProbe:
  httpGet: {path: /livez, port: {{ $admin }}}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  httpGet: {path: /readyz, port: {{ $admin }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
livenessProbe:
  httpGet: {path: /livez, port: {{ $admin }}}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- else }}
startupProbe:
  grpc: {port: {{ $grpc }}, service: ""}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  grpc: {port: {{ $grpc }}, service: {{ $service | quote }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
livenessProbe:
  grpc: {port: {{ $grpc }}, service: ""}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end }}
{{- end }}

{{/* Annotations that roll a component's pods when its configuration changes. */}}
{{- define "auscult.checksumAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
checksum/secret: {{ include (print .root.Template.BasePath "/secret.yaml") .root | sha256sum }}
{{- end }}

{{/* Hook annotations for the migration and model Jobs, or nothing when they are plain Jobs. */}}
{{- define "auscult.preHookAnnotations" -}}
{{- if include "auscult.migrationsAreHooks" .root }}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}
{{- end }}

{{/* Name of the migration and model Jobs: fixed when they are hooks (deleted before each run), suffixed with
     the release revision when they are plain Jobs (a Job's pod template is immutable). */}}
{{- define "auscult.bootstrapJobName" -}}
{{- if include "auscult.migrationsAreHooks" .root }}
{{- printf "%s-%s" (include "auscult.fullname" .root) .job }}
{{- else }}
{{- printf "%s-%s-%d" (include "auscult.fullname" .root) .job .root.Release.Revision }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peers for a list of CIDRs. */}}
{{- define "auscult.ipBlocks" -}}
{{- range . }}
- ipBlock:
    cidr: {{ . }}
{{- end }}
{{- end }}

{{/* A pod selector for some components of this release. Call with (dict "root" $ "components" (list …)). */}}
{{- define "auscult.componentSelector" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "auscult.name" .root }}
  app.kubernetes.io/instance: {{ .root.Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values:
      {{- range .components }}
      - {{ . }}
      {{- end }}
{{- end }}
