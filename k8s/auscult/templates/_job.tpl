{{/* A one-shot Job running the auscult CLI. Call with
       (dict "root" $ "component" "migrate" "name" "<job name>" "annotations" "<yaml map>"
             "args" (list "migrate" …) "env" "<yaml list>" "volumes" "<yaml list>" "volumeMounts" "<yaml list>"
             "waitForSchema" false "backoffLimit" 3 "activeDeadlineSeconds" 900 "ttl" false)
     The pods run with the namespace's default ServiceAccount and no token: hooks that run before the
     release's resources exist (pre-install) cannot use the chart's ServiceAccount, and no Job talks to the
     Kubernetes API. */}}
{{- define "auscult.job" -}}
{{- $root := .root }}
{{- $ctx := dict "root" $root "component" .component }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "auscult.labels" $ctx | nindent 4 }}
  {{- with .annotations }}
  annotations:
    {{- . | trim | nindent 4 }}
  {{- end }}
spec:
  backoffLimit: {{ .backoffLimit }}
  activeDeadlineSeconds: {{ .activeDeadlineSeconds }}
  {{- if .ttl }}
  ttlSecondsAfterFinished: {{ $root.Values.jobTtlSecondsAfterFinished }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "auscult.labels" $ctx | nindent 8 }}
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      enableServiceLinks: false
      securityContext:
        {{- include "auscult.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .waitForSchema }}
      initContainers:
        {{- include "auscult.waitForSchemaInitContainer" $root | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "auscult.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            - auscult
          args:
            {{- toYaml .args | nindent 12 }}
          env:
            {{- include "auscult.logEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- . | trim | nindent 12 }}
            {{- end }}
          resources:
            {{- toYaml $root.Values.jobResources | nindent 12 }}
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

{{/* A Secret holding a CA, mounted as a volume/volumeMount pair at /etc/auscult/<name>/ca.crt. */}}
{{- define "auscult.caVolume" -}}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: 0444
    items:
      - key: {{ .key }}
        path: ca.crt
{{- end }}

{{- define "auscult.caVolumeMount" -}}
- name: {{ .name }}
  mountPath: /etc/auscult/{{ .name }}
  readOnly: true
{{- end }}
