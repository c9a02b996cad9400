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

{{/* The headless Service of a service: one address per ready replica. */}}
{{- define "discovery.headless" -}}
{{- printf "%s-%s-headless.%s.svc" (include "discovery.fullname" .root) .name .root.Release.Namespace -}}
{{- end -}}

{{/* In-cluster URL list for an upstream: every replica via the headless Service. */}}
{{- define "discovery.upstream" -}}
{{- $svc := index .root.Values.services .name -}}
{{- printf "dns://%s:%v" (include "discovery.headless" .) $svc.port -}}
{{- end -}}

{{/* Monitoring's scrape list: every replica of every other service through
     its headless Service (resolved at each scrape), and its own registry. */}}
{{- define "discovery.scrape" -}}
{{- $out := list -}}
{{- range $name, $svc := .Values.services -}}
{{- if and $svc.enabled (ne $name "monitoring") -}}
{{- $out = append $out (printf "dns://%s:%v/metrics" (include "discovery.headless" (dict "root" $ "name" $name)) $.Values.metrics.port) -}}
{{- end -}}
{{- end -}}
{{- $out = append $out "local" -}}
{{- join "," $out -}}
{{- end -}}

{{/* The Secret holding DISCOVERY_INTERNAL_SECRET. */}}
{{- define "discovery.internalSecret" -}}
{{- default (printf "%s-internal" (include "discovery.fullname" .)) .Values.internalAuth.existingSecret -}}
{{- end -}}
