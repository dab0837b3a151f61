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

{{/*
  Every string a value or a name can put into a manifest is quoted: `--set konnect.tlsSecretName=y`, a release
  called `yes` or a namespace called `on` must stay strings (YAML 1.1 reads them as booleans).
*/}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "license-keeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "license-keeper.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
{{- end }}

{{/* Labels without app.kubernetes.io/managed-by (the license Secret sets its own). extraLabels is Kong's name. */}}
{{- define "license-keeper.baseLabels" -}}
helm.sh/chart: {{ include "license-keeper.chart" . | quote }}
{{ include "license-keeper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | toString | trunc 63 | quote }}
app.kubernetes.io/component: license-keeper
{{- with merge (dict) (.Values.commonLabels | default dict) (.Values.extraLabels | default dict) }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "license-keeper.labels" -}}
{{ include "license-keeper.baseLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end }}

{{/*
  One setting under two names, this chart's and Kong's (list of dicts with name and value): the value given,
  "" when none is; two different values fail rather than one silently winning.
*/}}
{{- define "license-keeper.oneOf" -}}
{{- $chosen := dict -}}
{{- range . -}}
{{- $value := .value | default "" | toString -}}
{{- if $value -}}
{{- if and $chosen.value (ne $chosen.value $value) -}}
{{- fail (printf "%s and %s differ: they are one setting (this chart's name and Kong's); give one" $chosen.name .name) -}}
{{- end -}}
{{- if not $chosen.value -}}
{{- $_ := set $chosen "name" .name -}}
{{- $_ := set $chosen "value" $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $chosen.value | default "" -}}
{{- end }}

{{/* The Konnect control plane ID; Kong's chart calls it controlPlaneID (runtimeGroupID before). */}}
{{- define "license-keeper.controlPlaneId" -}}
{{- $k := .Values.konnect -}}
{{- $id := include "license-keeper.oneOf" (list (dict "name" "konnect.controlPlaneId" "value" $k.controlPlaneId) (dict "name" "konnect.controlPlaneID" "value" $k.controlPlaneID) (dict "name" "konnect.runtimeGroupID" "value" $k.runtimeGroupID)) -}}
{{- required "konnect.controlPlaneId is required (Kong's name konnect.controlPlaneID works too)" $id -}}
{{- end }}

{{/* The Secret with the Konnect client certificate; Kong's chart calls it tlsClientCertSecretName. */}}
{{- define "license-keeper.konnectTlsSecretName" -}}
{{- $k := .Values.konnect -}}
{{- $name := include "license-keeper.oneOf" (list (dict "name" "konnect.tlsSecretName" "value" $k.tlsSecretName) (dict "name" "konnect.tlsClientCertSecretName" "value" $k.tlsClientCertSecretName)) -}}
{{- required "konnect.tlsSecretName is required (a Secret with tls.crt and tls.key)" $name -}}
{{- end }}

{{/* The Konnect address; Kong's chart gives the host alone, as apiHostname. */}}
{{- define "license-keeper.konnectAddress" -}}
{{- $k := .Values.konnect -}}
{{- $fromHost := "" -}}
{{- with $k.apiHostname }}{{ $fromHost = printf "https://%s" (trimPrefix "https://" .) }}{{ end -}}
{{- $address := include "license-keeper.oneOf" (list (dict "name" "konnect.address" "value" $k.address) (dict "name" "konnect.apiHostname" "value" $fromHost)) -}}
{{- $address | default "https://us.kic.api.konghq.com" -}}
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

{{/* [registry/]repository, then @digest, else :tag (default: the chart's appVersion). */}}
{{- define "license-keeper.image" -}}
{{- $repository := .Values.image.repository -}}
{{- with .Values.image.registry }}{{ $repository = printf "%s/%s" (trimSuffix "/" .) $repository }}{{ end -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* imagePullSecrets and Kong's image.pullSecrets (names, or {name: ...} as Kubernetes writes them). */}}
{{- define "license-keeper.imagePullSecrets" -}}
{{- $secrets := list -}}
{{- range concat (.Values.imagePullSecrets | default list) (.Values.image.pullSecrets | default list) -}}
{{- $secrets = append $secrets (kindIs "string" . | ternary (dict "name" .) .) -}}
{{- end -}}
{{- with $secrets }}{{ toYaml . }}{{ end -}}
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
{{- /* By default the runbooks are the docs of this chart's version, not of whatever main says today. */}}
{{- $rules = replace "https://github.com/license-keeper/license-keeper/blob/main/docs/operations.md" (trimSuffix "/" (tpl $v.runbookBaseUrl .)) $rules }}
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
