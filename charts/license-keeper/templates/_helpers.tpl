{{/* Chart name. */}}
{{- define "license-keeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name. */}}
{{- define "license-keeper.fullname" -}}
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

{{- define "license-keeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "license-keeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "license-keeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels without app.kubernetes.io/managed-by (the license Secret sets its own). */}}
{{- define "license-keeper.baseLabels" -}}
helm.sh/chart: {{ include "license-keeper.chart" . }}
{{ include "license-keeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/component: license-keeper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "license-keeper.labels" -}}
{{ include "license-keeper.baseLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "license-keeper.commonAnnotations" -}}
{{- with .Values.commonAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The license Secret: <controllerName>-license unless overridden. */}}
{{- define "license-keeper.secretName" -}}
{{- if .Values.secretName }}
{{- .Values.secretName }}
{{- else }}
{{- printf "%s-license" (required "controllerName is required" .Values.controllerName) }}
{{- end }}
{{- end }}

{{/* The Lease: <controllerName>-license-keeper unless overridden. */}}
{{- define "license-keeper.leaseName" -}}
{{- if .Values.leaderElection.leaseName }}
{{- .Values.leaderElection.leaseName }}
{{- else }}
{{- printf "%s-license-keeper" (required "controllerName is required" .Values.controllerName) }}
{{- end }}
{{- end }}

{{- define "license-keeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "license-keeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: [registry/]repository@digest when a digest is given (the tag is then left out: the digest
alone decides what runs), else [registry/]repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "license-keeper.image" -}}
{{- $repository := .Values.image.repository }}
{{- with .Values.image.registry }}{{ $repository = printf "%s/%s" . $repository }}{{ end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The --deliver targets, comma-separated (LICENSE_KEEPER_DELIVER); empty when delivery is off. */}}
{{- define "license-keeper.deliverTargets" -}}
{{- $targets := list -}}
{{- range .Values.delivery.adminApi.urls }}{{ $targets = append $targets (printf "admin-api=%s" .) }}{{ end -}}
{{- range .Values.delivery.adminService.services }}{{ $targets = append $targets (printf "admin-svc=%s" (include "license-keeper.adminService" (list $ .))) }}{{ end -}}
{{- with .Values.delivery.kongLicense.name }}{{ $targets = append $targets (printf "konglicense=%s" .) }}{{ end -}}
{{- range .Values.delivery.restart.deployments }}{{ $targets = append $targets (printf "restart=deployment/%s" .) }}{{ end -}}
{{- range .Values.delivery.restart.statefulSets }}{{ $targets = append $targets (printf "restart=statefulset/%s" .) }}{{ end -}}
{{- join "," $targets -}}
{{- end }}

{{/*
The alert rules: files/alerts.yaml (a plain Prometheus rule file, tested with `promtool test rules
tests/alerts/alerts.test.yaml`), copied as text so that Helm never evaluates the {{ $labels }} /
{{ $value }} alert templates in it. With the default values the copy is verbatim; the values change
only the runbook base URL, the two expiry thresholds and the `for:` durations.
*/}}
{{- define "license-keeper.alertRules" -}}
{{- $v := .Values.prometheusRule }}
{{- $rules := .Files.Get "files/alerts.yaml" }}
{{- if $v.runbookBaseUrl }}
{{- $rules = replace "https://github.com/license-keeper/license-keeper/blob/main/docs/operations.md" (trimSuffix "/" $v.runbookBaseUrl) $rules }}
{{- end }}
{{- $rules = replace ") < 30 * 86400" (printf ") < %d * 86400" (int $v.expiryWarningDays)) $rules }}
{{- $rules = replace ") >= 7 * 86400" (printf ") >= %d * 86400" (int $v.expiryCriticalDays)) $rules }}
{{- $rules = replace ") < 7 * 86400" (printf ") < %d * 86400" (int $v.expiryCriticalDays)) $rules }}
{{- if ne (float64 $v.forScale) 1.0 }}
{{- $rules = include "license-keeper.scaleFor" (dict "rules" $rules "scale" (float64 $v.forScale)) }}
{{- end }}
{{- $rules }}
{{- end }}

{{/*
Every `for: <n><unit>` line of the rules with the duration multiplied by .scale, written in whole
milliseconds so that it stays a Prometheus duration (1h at 1/3600 is 1000ms). For tests that must see an
alert fire within seconds; the shipped default (1) leaves the rules untouched.
*/}}
{{- define "license-keeper.scaleFor" -}}
{{- $units := dict "s" 1 "m" 60 "h" 3600 "d" 86400 "w" 604800 }}
{{- $lines := list }}
{{- range splitList "\n" .rules }}
{{- $line := . }}
{{- if regexMatch "^\\s*for:" $line }}
{{- if not (regexMatch "^\\s*for: [0-9]+[smhdw]\\s*$" $line) }}
{{- fail (printf "prometheusRule.forScale: cannot scale %q (one number and unit, s to w, only)" (trim $line)) }}
{{- end }}
{{- $n := regexReplaceAll "^\\s*for: ([0-9]+)([smhdw])\\s*$" $line "${1}" | atoi }}
{{- $unit := regexReplaceAll "^\\s*for: ([0-9]+)([smhdw])\\s*$" $line "${2}" }}
{{- $ms := round (mulf $n (get $units $unit) 1000 $.scale) 0 | int64 }}
{{- $line = printf "%sfor: %dms" (regexFind "^\\s*" $line) $ms }}
{{- end }}
{{- $lines = append $lines $line }}
{{- end }}
{{- join "\n" $lines }}
{{- end }}

{{/* An adminService entry as <namespace>/<service>[:port]: the release namespace when it names none. */}}
{{- define "license-keeper.adminService" -}}
{{- $root := index . 0 -}}{{- $entry := index . 1 -}}
{{- if contains "/" $entry }}{{ $entry }}{{ else }}{{ printf "%s/%s" $root.Release.Namespace $entry }}{{ end -}}
{{- end }}

{{/* The namespaces of the adminService entries, each once (a Role for EndpointSlices in each). */}}
{{- define "license-keeper.adminServiceNamespaces" -}}
{{- $namespaces := list -}}
{{- range .Values.delivery.adminService.services -}}
{{- $namespaces = append $namespaces (include "license-keeper.adminService" (list $ .) | splitList "/" | first) -}}
{{- end -}}
{{- $namespaces | uniq | join "," -}}
{{- end }}
