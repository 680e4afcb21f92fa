{{/* The Deployment of one auscult service. Call with
       (dict "root" $ "component" "ingest" "values" .Values.ingest
             "replicas" true            (false when an HPA owns the count)
             "httpProbes" false         (true: HTTP probes on the admin port instead of gRPC)
             "env" "<yaml list>"        (extra env entries: secrets and the downward API)
             "volumes" "<yaml list>" "volumeMounts" "<yaml list>")
     Rolling updates never take a serving pod away before its replacement is ready (maxUnavailable 0,
     maxSurge 1); on SIGTERM each service drains within shutdown_grace, and the kubelet waits longer than that
     (terminationGracePeriodSeconds, derived in values). */}}
{{- define "auscult.deployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $fullname := include "auscult.fullname" $root }}
{{- $ctx := dict "root" $root "component" .component }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}-{{ .component }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "auscult.labels" $ctx | nindent 4 }}
  {{- if not (dig "limits" "cpu" "" $v.resources) }}
  annotations:
    # Deliberately no CPU limit: CFS throttling would turn into acknowledgement and job latency; the CPU
    # request reserves the capacity and the memory limit bounds the pod.
    checkov.io/skip1: CKV_K8S_11=No CPU limit on purpose for a latency-bound service; CPU is requested
  {{- end }}
spec:
  {{- if .replicas }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  # Above the init container's wait for the schema (migrations.checkTimeout, 10m by default), so that a first
  # install that waits for PostgreSQL is not reported as a failed rollout.
  progressDeadlineSeconds: 1200
  selector:
    matchLabels:
      {{- include "auscult.selectorLabels" $ctx | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "auscult.labels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "auscult.checksumAnnotations" $ctx | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "auscult.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ include "auscult.terminationGracePeriodSeconds" $v }}
      securityContext:
        {{- include "auscult.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- include "auscult.scheduling" (dict "root" $root "component" .component "values" $v) | trim | nindent 6 }}
      initContainers:
        {{- include "auscult.waitForSchemaInitContainer" $root | nindent 8 }}
      containers:
        - name: {{ .component }}
          image: {{ include "auscult.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            - auscult-{{ .component }}
          ports:
            - name: grpc
              containerPort: {{ include "auscult.grpcPort" .component }}
              protocol: TCP
            - name: metrics
              containerPort: {{ include "auscult.adminPort" .component }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ $fullname }}-{{ .component }}
          env:
            {{- include "auscult.databaseUrlEnv" (dict "root" $root "name" "AUSCULT__DATABASE__URL") | nindent 12 }}
            {{- include "auscult.logEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- . | trim | nindent 12 }}
            {{- end }}
          {{- include "auscult.probes" (dict "component" .component "httpProbes" .httpProbes) | trim | nindent 10 }}
          {{- if gt (int $v.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ $v.preStopSleepSeconds }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- include "auscult.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .volumeMounts }}
            {{- . | trim | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- with .volumes }}
        {{- . | trim | nindent 8 }}
        {{- end }}
{{- end }}
