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
The proxy's pods, as the Services, the PodDisruptionBudget, the
NetworkPolicy and the spread select them: the component too, so that other
pods of the release carrying the same two labels (a CloudNativePG Cluster
passing its labels on) are never taken for the proxy's. (The Deployment's
own selector keeps the two labels: a selector cannot change on upgrade.)
*/}}
{{- define "residency-proxy.podLabels" -}}
{{ include "residency-proxy.selectorLabels" . }}
app.kubernetes.io/component: proxy
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

{{/*
The Secret with the transparency log's signing key.
*/}}
{{- define "residency-proxy.logKeySecretName" -}}
{{- default (printf "%s-log-key" (include "residency-proxy.fullname" .)) .Values.transparency.signingKey.existingSecret }}
{{- end }}

{{/*
The CloudNativePG cluster holding the log (rendered with
transparency.postgres.cnpg.enabled, or created by the operator's user).
*/}}
{{- define "residency-proxy.logDbClusterName" -}}
{{- default (printf "%s-log-db" (include "residency-proxy.fullname" .)) .Values.transparency.postgres.cnpg.clusterName | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/*
The log database's URL: transparency.postgres.url, or the CloudNativePG
cluster's -rw Service (always the primary).
*/}}
{{- define "residency-proxy.logDbUrl" -}}
{{- with .Values.transparency.postgres.url }}
{{- . }}
{{- else }}
{{- printf "postgres://%s@%s-rw:5432/%s?sslmode=require" .Values.transparency.postgres.cnpg.owner (include "residency-proxy.logDbClusterName" .) .Values.transparency.postgres.cnpg.database }}
{{- end }}
{{- end }}

{{/*
The Secret with the database password: CloudNativePG's <cluster>-app unless
an external URL is set, which needs transparency.postgres.existingSecret.
*/}}
{{- define "residency-proxy.logDbPasswordSecretName" -}}
{{- if .Values.transparency.postgres.existingSecret }}
{{- .Values.transparency.postgres.existingSecret }}
{{- else if .Values.transparency.postgres.url }}
{{- fail "transparency.postgres.existingSecret is required with an external transparency.postgres.url (the Secret holding the database password)" }}
{{- else }}
{{- printf "%s-app" (include "residency-proxy.logDbClusterName" .) }}
{{- end }}
{{- end }}

{{/*
The Secret with the database's CA: CloudNativePG's <cluster>-ca unless an
external URL is set, which needs transparency.postgres.ca.existingSecret (or
ca.systemRoots).
*/}}
{{- define "residency-proxy.logDbCaSecretName" -}}
{{- if .Values.transparency.postgres.ca.existingSecret }}
{{- .Values.transparency.postgres.ca.existingSecret }}
{{- else if .Values.transparency.postgres.url }}
{{- fail "transparency.postgres.ca.existingSecret is required with an external transparency.postgres.url (or set transparency.postgres.ca.systemRoots=true)" }}
{{- else }}
{{- printf "%s-ca" (include "residency-proxy.logDbClusterName" .) }}
{{- end }}
{{- end }}

{{/*
The [transparency] section of config.toml: the fleet's log in PostgreSQL.
The paths are where the Deployment projects the Secrets.
*/}}
{{- define "residency-proxy.transparencyConfig" -}}
{{- if regexMatch "://[^/@]*:[^/@]*@" .Values.transparency.postgres.url }}
{{- fail "transparency.postgres.url must not carry the password: put it in the Secret transparency.postgres.existingSecret" }}
{{- end -}}
# Proof of residency: one transparency log for every replica, sequenced in
# PostgreSQL (rendered by the chart from the `transparency` values).
[transparency]
storage = "postgres"
origin = {{ required "transparency.origin is required (the log's name)" .Values.transparency.origin | quote }}
signing_key = "/etc/residency-proxy/log/signing.key"
address = "0.0.0.0:{{ .Values.transparency.port }}"
max_connections_per_client = {{ .Values.transparency.maxConnectionsPerClient | int }}
requests_per_second_per_client = {{ .Values.transparency.requestsPerSecondPerClient | int }}
checkpoint_interval = {{ .Values.transparency.checkpointInterval | quote }}
receipts = {{ .Values.transparency.receipts | quote }}
on_write_error = {{ .Values.transparency.onWriteError | quote }}

[transparency.postgres]
url = {{ include "residency-proxy.logDbUrl" . | quote }}
password_file = "/etc/residency-proxy/log-db/password"
{{- if not .Values.transparency.postgres.ca.systemRoots }}
ca = "/etc/residency-proxy/log-db/ca.crt"
{{- end }}
timeout = {{ .Values.transparency.postgres.timeout | quote }}
max_pending = {{ .Values.transparency.postgres.maxPending | int }}
pool_size = {{ .Values.transparency.postgres.poolSize | int }}
{{- range .Values.transparency.witnesses }}

[[transparency.witnesses]]
url = {{ required "transparency.witnesses: url is required" .url | quote }}
key = {{ required "transparency.witnesses: key is required" .key | quote }}
{{- with .name }}
name = {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
