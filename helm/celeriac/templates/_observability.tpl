{{- /* Observability helpers (metrics port, Datadog autodiscovery annotations); the
templates that use them include one line each. docs/operations/observability.md. */}}

{{- define "celeriac.metricsPort" -}}
{{- if .Values.metrics.enabled }}
ports:
  - name: metrics
    containerPort: {{ .Values.metrics.port }}
    protocol: TCP
{{- end }}
{{- end }}

{{- /* dict "root" $ "container" "worker" "port" 9100 */}}
{{- define "celeriac.datadogAnnotations" -}}
{{- if and .root.Values.metrics.enabled .root.Values.metrics.datadog.enabled }}
{{- $instance := dict "openmetrics_endpoint" (printf "http://%%%%host%%%%:%v/metrics" .port) "namespace" .root.Values.metrics.datadog.namespace "metrics" (list "celeriac_.*") }}
ad.datadoghq.com/{{ .container }}.checks: {{ dict "openmetrics" (dict "init_config" (dict) "instances" (list $instance)) | toJson | quote }}
{{- end }}
{{- end }}
