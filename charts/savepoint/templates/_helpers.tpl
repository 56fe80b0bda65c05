{{/*
Names. The prefix of every object is "savepoint.fullname": the release name
when it already contains the chart name (release "savepoint" -> "savepoint"),
else "<release>-<chart>". Objects are "<prefix>-<role>", so two releases in one
cluster never share a cluster-scoped name.
*/}}
{{- define "savepoint.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "savepoint.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "savepoint.serviceAccountName" -}}
{{- default (printf "%s-operator" (include "savepoint.fullname" .)) .Values.serviceAccount.name }}
{{- end }}

{{/* The ClusterKopfPeering the replicas elect their leader in. */}}
{{- define "savepoint.peeringName" -}}
{{- default (include "savepoint.fullname" .) .Values.peering.name }}
{{- end }}

{{/* Images: "repository:tag", the tag defaulting to the chart's appVersion. */}}
{{- define "savepoint.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "savepoint.moverImage" -}}
{{- $repo := default .Values.image.repository .Values.mover.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.mover.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "savepoint.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "savepoint.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: savepoint
{{- end }}

{{/* Labels that select the operator pods (stable across upgrades). */}}
{{- define "savepoint.selectorLabels" -}}
app.kubernetes.io/name: {{ include "savepoint.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "savepoint.operatorSelectorLabels" -}}
{{ include "savepoint.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's settings (operator/settings.py): each field `x` is read from the
environment variable SAVEPOINT_X. Tests that run the operator outside a pod
take the same variables from the rendered Deployment.
*/}}
{{- define "savepoint.settingsEnv" -}}
- name: SAVEPOINT_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: SAVEPOINT_CEPH_CONFIG_MAP
  value: {{ printf "%s/%s" .Values.ceph.configMap.namespace .Values.ceph.configMap.name | quote }}
- name: SAVEPOINT_CEPH_SECRET
  value: {{ printf "%s/%s" .Values.ceph.secret.namespace .Values.ceph.secret.name | quote }}
- name: SAVEPOINT_RAW_REFERENCE_NAMESPACES
  value: {{ join "," .Values.rawReferenceNamespaces | quote }}
- name: SAVEPOINT_WATCH_NAMESPACES
  value: {{ join "," .Values.watchNamespaces | quote }}
{{- with .Values.defaultRepository }}
- name: SAVEPOINT_DEFAULT_REPOSITORY
  value: {{ toJson . | quote }}
{{- end }}
- name: SAVEPOINT_IMAGE_POOL
  value: {{ .Values.imagePool | quote }}
- name: SAVEPOINT_IMAGE_POOLS
  value: {{ join "," .Values.imagePools | quote }}
{{- with .Values.ceph.imageCopySecret }}
- name: SAVEPOINT_IMAGE_COPY_SECRET
  value: {{ printf "%s/%s" .namespace .name | quote }}
{{- end }}
- name: SAVEPOINT_MOVER_IMAGE
  value: {{ include "savepoint.moverImage" . | quote }}
- name: SAVEPOINT_MOVER_SERVICE_ACCOUNT
  value: {{ .Values.mover.serviceAccountName | quote }}
- name: SAVEPOINT_MOVER_PRIVILEGED_ALLOWED
  value: {{ .Values.mover.privileged.allowed | toString | quote }}
- name: SAVEPOINT_MOVER_CONCURRENCY
  value: {{ .Values.mover.concurrency | toString | quote }}
- name: SAVEPOINT_MOVER_NAMESPACE_SHARE
  value: {{ if .Values.mover.namespaceShare }}{{ .Values.mover.namespaceShare | toString | quote }}{{ else }}""{{ end }}
- name: SAVEPOINT_MOVER_BACKOFF_LIMIT
  value: {{ .Values.mover.backoffLimit | toString | quote }}
- name: SAVEPOINT_MOVER_START_TIMEOUT
  value: {{ .Values.mover.startTimeoutSeconds | toString | quote }}
{{- $pod := dict }}
{{- with .Values.mover.resources }}{{ $_ := set $pod "resources" . }}{{ end }}
{{- with .Values.mover.nodeSelector }}{{ $_ := set $pod "nodeSelector" . }}{{ end }}
{{- with .Values.mover.tolerations }}{{ $_ := set $pod "tolerations" . }}{{ end }}
{{- with .Values.mover.affinity }}{{ $_ := set $pod "affinity" . }}{{ end }}
{{- with .Values.mover.priorityClassName }}{{ $_ := set $pod "priorityClassName" . }}{{ end }}
{{- with .Values.mover.imagePullSecrets }}{{ $_ := set $pod "imagePullSecrets" . }}{{ end }}
{{- with .Values.mover.podSecurityContext }}{{ $_ := set $pod "podSecurityContext" . }}{{ end }}
{{- with .Values.mover.securityContext }}{{ $_ := set $pod "securityContext" . }}{{ end }}
- name: SAVEPOINT_MOVER_POD
  value: {{ toJson $pod | quote }}
- name: SAVEPOINT_MOVER_PROGRESS_INTERVAL
  value: {{ .Values.mover.progressIntervalSeconds | toString | quote }}
- name: SAVEPOINT_DEFAULT_DEADLINE_SECONDS
  value: {{ .Values.defaultDeadlineSeconds | toString | quote }}
- name: SAVEPOINT_MAX_DEADLINE_SECONDS
  value: {{ .Values.maxDeadlineSeconds | toString | quote }}
- name: SAVEPOINT_MAX_VOLUME_BYTES
  value: {{ .Values.maxVolumeBytes | int64 | toString | quote }}
- name: SAVEPOINT_METRICS_PORT
  value: {{ ternary .Values.metrics.port 0 .Values.metrics.enabled | toString | quote }}
- name: SAVEPOINT_HEALTH_PORT
  value: {{ .Values.operator.healthPort | toString | quote }}
{{- if .Values.peering.enabled }}
- name: SAVEPOINT_PEERING
  value: {{ include "savepoint.peeringName" . | quote }}
{{- end }}
{{- end }}

{{/* A duration value (`90s`, `2h`, `1h30m`, as the schema allows) in whole seconds, for PromQL comparisons. */}}
{{- define "savepoint.seconds" -}}
{{- $total := 0 }}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h)" . -1 }}
{{- $n := regexFind "^[0-9]+" $part | int }}
{{- $unit := trimPrefix (toString $n) $part }}
{{- if eq $unit "h" }}{{ $total = add $total (mul $n 3600) }}
{{- else if eq $unit "m" }}{{ $total = add $total (mul $n 60) }}
{{- else if eq $unit "s" }}{{ $total = add $total $n }}
{{- end }}
{{- end }}
{{- $total }}
{{- end }}
