{{/*
Chart name, truncated to 63 characters (the DNS label limit).
*/}}
{{- define "residency-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name already contains the chart
name it is used as is.
*/}}
{{- define "residency-proxy.fullname" -}}
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

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "residency-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release.
*/}}
{{- define "residency-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "residency-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "residency-proxy.labels" -}}
helm.sh/chart: {{ include "residency-proxy.chart" . }}
{{ include "residency-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Service account name.
*/}}
{{- define "residency-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "residency-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The kubernetes.io/tls Secret with the serving certificate.
*/}}
{{- define "residency-proxy.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "residency-proxy.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/*
The Secret with the geoipupdate credentials.
*/}}
{{- define "residency-proxy.geoipSecretName" -}}
{{- default (printf "%s-geoipupdate" (include "residency-proxy.fullname" .)) .Values.geoip.updater.existingSecret }}
{{- end }}

{{/*
The proxy image reference.
*/}}
{{- define "residency-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
