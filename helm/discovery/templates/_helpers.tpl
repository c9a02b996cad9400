{{- define "discovery.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "discovery.labels" -}}
app.kubernetes.io/part-of: discovery
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service: (dict "root" $ "name" "gateway") */}}
{{- define "discovery.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "discovery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "discovery.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* In-cluster URL list for an upstream: every replica via the headless Service. */}}
{{- define "discovery.upstream" -}}
{{- $svc := index .root.Values.services .name -}}
{{- printf "dns://%s-%s-headless.%s.svc:%v" (include "discovery.fullname" .root) .name .root.Release.Namespace $svc.port -}}
{{- end -}}

{{/* The Secret holding DISCOVERY_INTERNAL_SECRET. */}}
{{- define "discovery.internalSecret" -}}
{{- default (printf "%s-internal" (include "discovery.fullname" .)) .Values.internalAuth.existingSecret -}}
{{- end -}}
