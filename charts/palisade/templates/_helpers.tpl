{{/* The image every container runs. */}}
{{- define "palisade.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "palisade.labels" -}}
app.kubernetes.io/name: palisade
{{- end -}}

{{/* The agent pods' selector. */}}
{{- define "palisade.agentSelector" -}}
app.kubernetes.io/name: palisade
app.kubernetes.io/component: agent
{{- end -}}

{{/* --metrics-addr from metrics.address. */}}
{{- define "palisade.metricsAddr" -}}
{{- if eq .Values.metrics.address "node-ip" -}}
$(HOST_IP)
{{- else -}}
{{ .Values.metrics.address }}
{{- end -}}
{{- end -}}

{{/* A container securityContext with no capability and no way to gain one. */}}
{{- define "palisade.fileWriterSecurity" -}}
securityContext:
  # Plain file writes as root into root-owned directories: no capability
  # at all.
  allowPrivilegeEscalation: false
  capabilities:
    drop: [ALL]
  seccompProfile: {type: RuntimeDefault}
{{- end -}}
