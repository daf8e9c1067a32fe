{{/* Names and labels. */}}
{{- define "oa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* At most 40 characters: suffixes like -clickhouse and StatefulSet pod labels must fit in 63. */}}
{{- define "oa.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "oa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "oa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openanalytics
{{- end }}

{{/* Selector labels of one component: include "oa.selector" (list . "api") */}}
{{- define "oa.selector" -}}
app.kubernetes.io/name: {{ include "oa.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "oa.componentLabels" -}}
{{ include "oa.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "oa.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secrets: URLs given inline, passwords of the in-release stores, and the one you create. */}}
{{- define "oa.urlSecret" -}}{{ include "oa.fullname" . }}-store-urls{{- end }}
{{- define "oa.passwordSecret" -}}{{ default (printf "%s-store-passwords" (include "oa.fullname" .)) .Values.stores.passwordsSecret }}{{- end }}
{{- define "oa.defaultSecret" -}}{{ default (printf "%s-connections" (include "oa.fullname" .)) .Values.stores.defaultSecretName }}{{- end }}

{{/* One store's OA_* variable: include "oa.storeEnv" (list . "postgresql" "OA_DATABASE_URL") */}}
{{- define "oa.storeEnv" -}}
{{- $root := index . 0 }}
{{- $store := index . 1 }}
{{- $var := index . 2 }}
{{- $v := index $root.Values.stores $store }}
{{- $full := include "oa.fullname" $root }}
{{- if $v.deploy }}
- name: {{ printf "OA_%s_PASSWORD" (upper $store) }}
  valueFrom:
    secretKeyRef: {name: {{ include "oa.passwordSecret" $root }}, key: {{ $store }}}
- name: {{ $var }}
{{- if eq $store "postgresql" }}
  value: {{ printf "postgresql+psycopg://openanalytics:$(OA_POSTGRESQL_PASSWORD)@%s-postgresql:5432/openanalytics" $full | quote }}
{{- else if eq $store "redis" }}
  value: {{ printf "redis://:$(OA_REDIS_PASSWORD)@%s-redis:6379/0" $full | quote }}
{{- else }}
  value: {{ printf "http://openanalytics:$(OA_CLICKHOUSE_PASSWORD)@%s-clickhouse:8123" $full | quote }}
{{- end }}
{{- else if $v.existingSecret.name }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef: {name: {{ $v.existingSecret.name | quote }}, key: {{ $v.existingSecret.key | quote }}}
{{- else if $v.url }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef: {name: {{ include "oa.urlSecret" $root }}, key: {{ $store }}}
{{- else }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef: {name: {{ include "oa.defaultSecret" $root | quote }}, key: {{ $v.existingSecret.key | quote }}}
{{- end }}
{{- end }}

{{/* Environment shared by the API, worker, operator and migrate Job. */}}
{{- define "oa.env" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- include "oa.storeEnv" (list $root "postgresql" "OA_DATABASE_URL") | trim }}
{{ include "oa.storeEnv" (list $root "redis" "OA_REDIS_URL") | trim }}
{{ include "oa.storeEnv" (list $root "clickhouse" "OA_CLICKHOUSE_URL") | trim }}
- name: OA_PLANS_FILE
  value: /etc/openanalytics/plans.json
- name: OA_DATA_DIR
  value: /tmp/openanalytics
- name: OA_LOG_LEVEL
  value: {{ $root.Values.config.logLevel | quote }}
{{- with $root.Values.config.trustedProxies }}
- name: OA_TRUSTED_PROXIES
  value: {{ join "," . | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "openanalytics-%s" $component }}
{{- with $root.Values.opentelemetry }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .tracesSampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ .tracesSamplerArg | quote }}
{{- else if not .prometheusPort }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- if .prometheusPort }}
- name: OA_PROMETHEUS_PORT
  value: {{ .prometheusPort | quote }}
{{- end }}
{{- if .resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ .resourceAttributes | quote }}
{{- end }}
{{- end }}
{{- with $root.Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll pods when what they read changes. */}}
{{- define "oa.rollOn" -}}
checksum/plans: {{ include (print .Template.BasePath "/configmap-plans.yaml") . | sha256sum }}
checksum/store-urls: {{ include (print .Template.BasePath "/secret-store-urls.yaml") . | sha256sum }}
{{- with .Values.opentelemetry.prometheusPort }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* Volumes and mounts every OpenAnalytics container has: the plans and a writable /tmp. */}}
{{- define "oa.volumes" -}}
- name: plans
  configMap: {name: {{ include "oa.fullname" . }}-plans}
- name: tmp
  emptyDir: {sizeLimit: 256Mi}
{{- end }}
{{- define "oa.volumeMounts" -}}
- {name: plans, mountPath: /etc/openanalytics, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- end }}

{{/* Spread replicas over nodes unless the user set an affinity. */}}
{{- define "oa.affinity" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- $affinity := index . 2 }}
{{- if $affinity }}
{{- toYaml $affinity }}
{{- else }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "oa.selector" (list $root $component) | nindent 12 }}
{{- end }}
{{- end }}

{{/* Stores given neither deploy, url nor existingSecret: their URL comes from the default Secret. */}}
{{- define "oa.missingStores" -}}
{{- range $store := list "postgresql" "redis" "clickhouse" }}
{{- $v := index $.Values.stores $store }}
{{- if not (or $v.deploy $v.url $v.existingSecret.name) }}{{ $v.existingSecret.key }} {{ end }}
{{- end }}
{{- end }}

{{/* Talking to a cluster (not `helm template`): its namespace's default ServiceAccount is visible. */}}
{{- define "oa.connected" -}}
{{- if lookup "v1" "ServiceAccount" .Release.Namespace "default" }}yes{{ end }}
{{- end }}

{{- define "oa.createSecretHelp" -}}
{{- $shapes := dict "database-url" "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB" "redis-url" "redis://:PASSWORD@HOST:6379/0" "clickhouse-url" "http://USER:PASSWORD@HOST:8123" }}
  kubectl -n {{ .Release.Namespace }} create secret generic {{ include "oa.defaultSecret" . }}
{{- range (include "oa.missingStores" . | trim | splitList " ") }} \
    --from-literal={{ . }}='{{ index $shapes . | default "URL" }}'
{{- end }}
{{- end }}

{{/* Fails a real install (not `helm template`) whose stores have nowhere to come from. */}}
{{- define "oa.checkConnections" -}}
{{- if and (include "oa.missingStores" . | trim) (include "oa.connected" .) }}
{{- if not (lookup "v1" "Secret" .Release.Namespace (include "oa.defaultSecret" .)) }}
{{- fail (printf "\n\nno connection for: %s\nSet stores.<store>.url, stores.<store>.existingSecret or stores.<store>.deploy=true (evaluation), or create the Secret first:\n\n%s\n" (include "oa.missingStores" . | trim) (include "oa.createSecretHelp" .)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The metrics port, when the Prometheus endpoint is on. */}}
{{- define "oa.metricsPort" -}}
{{- with .Values.opentelemetry.prometheusPort }}
- {name: metrics, containerPort: {{ . }}, protocol: TCP}
{{- end }}
{{- end }}

{{/* The data volume of an in-release store's StatefulSet: include "oa.storeVolumeClaims" (list . .Values.stores.redis) */}}
{{- define "oa.storeVolumeClaims" -}}
{{- $root := index . 0 }}
{{- $store := index . 1 -}}
- metadata:
    name: data
  spec:
    accessModes: [ReadWriteOnce]
    {{- with $root.Values.stores.storageClassName }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests: {storage: {{ $store.storage }}}
{{- end }}

{{/* Bytes of a size with a unit from the table, e.g. (list "512Mi" (dict "Mi" 1048576)); empty when not understood. */}}
{{- define "oa.bytes" -}}
{{- $size := index . 0 }}
{{- $units := index . 1 }}
{{- if kindIs "string" $size }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $size }}
{{- $unit := trimPrefix $number $size }}
{{- if and $number (hasKey $units $unit) }}{{ mulf (float64 $number) (index $units $unit) }}{{ end }}
{{- else if $size }}{{ float64 $size }}
{{- end }}
{{- end }}

{{/* stores.redis.maxmemory as redis-server takes it; refused unless below the container's memory limit. */}}
{{- define "oa.redisMaxmemory" -}}
{{- $redis := .Values.stores.redis }}
{{- $maxmemory := kindIs "string" $redis.maxmemory | ternary $redis.maxmemory (int64 $redis.maxmemory | toString) }}
{{- $bytes := include "oa.bytes" (list (lower $maxmemory) (dict "" 1 "b" 1 "k" 1000 "kb" 1024 "m" 1000000 "mb" 1048576 "g" 1000000000 "gb" 1073741824)) }}
{{- $limit := dig "limits" "memory" "" $redis.resources }}
{{- $limitBytes := include "oa.bytes" (list $limit (dict "" 1 "k" 1000 "Ki" 1024 "M" 1000000 "Mi" 1048576 "G" 1000000000 "Gi" 1073741824 "T" 1000000000000 "Ti" 1099511627776)) }}
{{- if and $bytes $limitBytes (ge (float64 $bytes) (float64 $limitBytes)) }}
{{- fail (printf "stores.redis.maxmemory (%s) must be below stores.redis.resources.limits.memory (%v), with room to spare: Redis must refuse writes before the kernel kills it" $maxmemory $limit) }}
{{- end }}
{{- $maxmemory }}
{{- end }}
