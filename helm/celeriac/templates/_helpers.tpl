{{/* Names and labels. */}}
{{- define "celeriac.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "celeriac.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "celeriac.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "celeriac.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: pass (dict "root" $ "component" "api"). */}}
{{- define "celeriac.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celeriac.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "celeriac.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "celeriac.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "celeriac.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret every pod reads its secret CELERIAC_* variables from (without External
Secrets; with it, each component has its own: celeriac.componentSecretName). */}}
{{- define "celeriac.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else if .Values.secrets.create }}
{{- printf "%s-secrets" (include "celeriac.fullname" .) }}
{{- else }}
{{- fail "set secrets.existingSecret (preferred), externalSecrets.enabled, or secrets.create with secrets.env" }}
{{- end }}
{{- end }}

{{/*
The secret settings each component reads, and nothing else (a compute worker never gets the
JWT secret or the key pepper). "required" keys must be in the Secret (the pod does not start
without them); "optional" ones are passed when present. Pass the component's group:
"api", "workers" (the pools and beat) or "migrate".
*/}}
{{- define "celeriac.secretKeys" -}}
{{- $common := list "CELERIAC_DATABASE_URL" "CELERIAC_BROKER_URL" "CELERIAC_REDIS_URL" }}
{{- $optional := list "CELERIAC_SENTRY_DSN" "CELERIAC_RESULT_BACKEND" }}
{{- $keys := dict
  "api" (dict "required" (concat $common (list "CELERIAC_AUTH__JWT_HS256_SECRET" "CELERIAC_AUTH__API_KEY_PEPPER" "CELERIAC_API__METRICS_TOKEN")) "optional" $optional)
  "workers" (dict "required" $common "optional" $optional)
  "migrate" (dict "required" (list "CELERIAC_DATABASE_URL") "optional" (list "CELERIAC_SENTRY_DSN"))
}}
{{- toYaml (get $keys .) }}
{{- end }}

{{/* The Secret component group .group reads: (dict "root" $ "group" "api"). */}}
{{- define "celeriac.componentSecretName" -}}
{{- if .root.Values.externalSecrets.enabled }}
{{- printf "%s-%s" (include "celeriac.fullname" .root) .group }}
{{- else }}
{{- include "celeriac.secretName" .root }}
{{- end }}
{{- end }}

{{/* env entries for the secret keys of group .group, each from its Secret by key. */}}
{{- define "celeriac.secretEnv" -}}
{{- $keys := include "celeriac.secretKeys" .group | fromYaml }}
{{- $secret := include "celeriac.componentSecretName" . }}
{{- range $name := $keys.required }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $name }}}
{{- end }}
{{- range $name := $keys.optional }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $name }}, optional: true}
{{- end }}
{{- end }}

{{/* Where the processes keep files (beat's schedule): an emptyDir, as the root fs is read-only. */}}
{{- define "celeriac.varDir" -}}/var/lib/celeriac{{- end }}

{{/*
The non-secret CELERIAC_* environment as a YAML map, shared by the ConfigMap and the
migration Job (a pre-install hook runs before the ConfigMap exists). Names are fields of
platform/settings.py.
*/}}
{{- define "celeriac.configEnv" -}}
{{- $w := .Values.workers }}
{{- if not (lt (int $w.compute.softTimeLimit) (int $w.compute.hardTimeLimit)) }}
{{- fail "workers.compute.softTimeLimit must be below workers.compute.hardTimeLimit" }}
{{- end }}
{{- if not (lt (int $w.compute.hardTimeLimit) (int $w.visibilityTimeout)) }}
{{- fail "workers.visibilityTimeout must exceed workers.compute.hardTimeLimit (or long tasks run twice)" }}
{{- end }}
{{- $env := dict
  "CELERIAC_ENVIRONMENT" .Values.config.environment
  "CELERIAC_VAR_DIR" (include "celeriac.varDir" .)
  "CELERIAC_API__HOST" "0.0.0.0"
  "CELERIAC_API__PORT" .Values.api.port
  "CELERIAC_BLOB__BACKEND" .Values.config.blob.backend
  "CELERIAC_BLOB__REGION" .Values.config.blob.region
  "CELERIAC_KEYS__PROVIDER" .Values.config.keys.provider
  "CELERIAC_KEYS__MODE" .Values.config.keys.mode
  "CELERIAC_LOG__LEVEL" .Values.config.log.level
  "CELERIAC_LOG__JSON_LINES" .Values.config.log.jsonLines
  "CELERIAC_WORKERS__VISIBILITY_TIMEOUT" $w.visibilityTimeout
  "CELERIAC_WORKERS__COMPUTE_MAX_TASKS_PER_CHILD" $w.compute.maxTasksPerChild
  "CELERIAC_WORKERS__COMPUTE_SOFT_TIME_LIMIT" $w.compute.softTimeLimit
  "CELERIAC_WORKERS__COMPUTE_HARD_TIME_LIMIT" $w.compute.hardTimeLimit
}}
{{- if .Values.config.blob.s3Bucket }}
{{- $_ := set $env "CELERIAC_BLOB__S3_BUCKET" .Values.config.blob.s3Bucket }}
{{- else if eq .Values.config.blob.backend "s3" }}
{{- fail "config.blob.s3Bucket is required with config.blob.backend=s3 (Terraform output blob_bucket)" }}
{{- end }}
{{- range $pool, $spec := $w }}
{{- if kindIs "map" $spec }}
{{- $_ := set $env (printf "CELERIAC_WORKERS__%s_CONCURRENCY" (upper $pool)) $spec.concurrency }}
{{- end }}
{{- end }}
{{- if .Values.metrics.enabled }}
{{- $_ := set $env "CELERIAC_OBSERVABILITY__METRICS_PORT" .Values.metrics.port }}
{{- $_ := set $env "CELERIAC_OBSERVABILITY__METRICS_HOST" "0.0.0.0" }}
{{- else }}
{{- $_ := set $env "CELERIAC_OBSERVABILITY__METRICS_ENABLED" "false" }}
{{- end }}
{{- range $name, $value := .Values.config.extra }}
{{- if not (hasPrefix "CELERIAC_" $name) }}
{{- fail (printf "config.extra.%s: only CELERIAC_* settings belong here" $name) }}
{{- end }}
{{- if hasKey $env $name }}
{{- fail (printf "config.extra.%s: set by the chart from its own value" $name) }}
{{- end }}
{{- $_ := set $env $name $value }}
{{- end }}
{{- range $name, $value := $env }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every Celeriac pod. */}}
{{- define "celeriac.podSpecCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 1Gi
  - name: var
    emptyDir:
      sizeLimit: 64Mi
{{- end }}

{{/*
Container fields shared by every Celeriac container: (dict "root" $ "group" "workers"),
where the group names the secret keys the container gets (celeriac.secretKeys); an optional
"env" dict adds settings only this container reads.
*/}}
{{- define "celeriac.containerCommon" -}}
image: {{ include "celeriac.image" .root | quote }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
envFrom:
  - configMapRef:
      name: {{ include "celeriac.fullname" .root }}-config
env:
  {{- include "celeriac.secretEnv" . | nindent 2 }}
  {{- range $name, $value := .env }}
  - name: {{ $name }}
    value: {{ $value | toString | quote }}
  {{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  - name: var
    mountPath: {{ include "celeriac.varDir" .root }}
{{- end }}

{{/* Pods of one component spread across zones, then nodes: (dict "root" $ "component" "api"). */}}
{{- define "celeriac.topologySpread" -}}
{{- with .root.Values.topologySpread }}
{{- if .enabled }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: {{ .zoneWhenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "celeriac.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
    matchLabelKeys: [pod-template-hash]
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "celeriac.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
    matchLabelKeys: [pod-template-hash]
{{- end }}
{{- end }}
{{- end }}

{{/* Pods restart when External Secrets rotates one of their Secrets (Stakater Reloader). */}}
{{- define "celeriac.reloadAnnotations" -}}
{{- if and .root.Values.externalSecrets.enabled .root.Values.externalSecrets.restartOnRotation }}
secret.reloader.stakater.com/reload: {{ include "celeriac.componentSecretName" . | quote }}
{{- end }}
{{- end }}

{{/* Pod template annotations: roll the pods when the configuration changes. */}}
{{- define "celeriac.podAnnotations" -}}
checksum/config: {{ include "celeriac.configEnv" . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
