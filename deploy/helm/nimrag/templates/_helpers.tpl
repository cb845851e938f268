{{/* The services, in one place: every per-service template ranges over this list. */}}
{{- define "nimrag.services" -}}
embed rerank llm pipeline
{{- end -}}

{{- define "nimrag.modelServices" -}}
embed rerank llm
{{- end -}}

{{- define "nimrag.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nimrag.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A service's objects: <fullname>-<service>, e.g. nimrag-embed. Call with (dict "root" $ "name" "embed"). */}}
{{- define "nimrag.componentName" -}}
{{- printf "%s-%s" (include "nimrag.fullname" .root | trunc 50 | trimSuffix "-") .name -}}
{{- end -}}

{{- define "nimrag.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "nimrag.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nimrag
{{- end -}}

{{- define "nimrag.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nimrag.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of one service's objects; (dict "root" $ "name" "embed"). */}}
{{- define "nimrag.componentLabels" -}}
{{ include "nimrag.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "nimrag.componentSelectorLabels" -}}
{{ include "nimrag.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "nimrag.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nimrag.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "nimrag.secretName" -}}
{{- default (printf "%s-api-keys" (include "nimrag.fullname" .)) .Values.apiKeys.existingSecret -}}
{{- end -}}

{{/* nimrag/embed:0.1.0, or nimrag/embed-cuda:0.1.0 with gpu.enabled. */}}
{{- define "nimrag.image" -}}
{{- $image := .root.Values.image -}}
{{- $variant := ternary "-cuda" "" (dig "gpu" "enabled" false .svc) -}}
{{- printf "%s%s/%s%s:%s" $image.registry $image.repository .name $variant (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* The prefix of a service's settings: NIMRAG_EMBED_, ... */}}
{{- define "nimrag.envPrefix" -}}
{{- printf "NIMRAG_%s_" (upper .) -}}
{{- end -}}

{{/* Values arrive as JSON numbers: print whole ones as integers, not 1e+06. */}}
{{- define "nimrag.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The URL the pipeline calls a model service at: its `urls` override, else the chart's Service. */}}
{{- define "nimrag.modelServiceUrl" -}}
{{- $override := get .root.Values.pipeline.urls .name -}}
{{- if $override -}}
{{- $override -}}
{{- else -}}
{{- printf "http://%s:%v/v1" (include "nimrag.componentName" .) (include "nimrag.envValue" (get .root.Values .name).port) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the pipeline's Milvus is a server replicas share (not empty, not a Milvus Lite .db file). */}}
{{- define "nimrag.pipeline.milvusServer" -}}
{{- $uri := .Values.pipeline.milvus.uri -}}
{{- if and (eq .Values.pipeline.vectorStore "milvus") $uri (not (hasSuffix ".db" $uri)) -}}true{{- end -}}
{{- end -}}

{{/* "true" when some pipeline state lives in its data folder: it then needs a PVC and runs one replica. */}}
{{- define "nimrag.pipeline.localState" -}}
{{- if or (not (include "nimrag.pipeline.milvusServer" .)) (eq .Values.pipeline.taskStore "sqlite") -}}true{{- end -}}
{{- end -}}

{{/* How the pipeline is scaled past one replica ("" when it is not). */}}
{{- define "nimrag.pipeline.scaledBy" -}}
{{- $p := .Values.pipeline -}}
{{- if $p.autoscaling.enabled -}}
pipeline.autoscaling.enabled=true
{{- else if gt (int64 $p.replicaCount) 1 -}}
pipeline.replicaCount={{ int64 $p.replicaCount }}
{{- end -}}
{{- end -}}

{{/* Refuse values that cannot work, with what to change. */}}
{{- define "nimrag.validate" -}}
{{- $p := .Values.pipeline -}}
{{- if not (has $p.vectorStore (list "faiss" "milvus")) -}}
{{- fail (printf "pipeline.vectorStore=%v: faiss or milvus" $p.vectorStore) -}}
{{- end -}}
{{- if not (has $p.taskStore (list "sqlite" "redis")) -}}
{{- fail (printf "pipeline.taskStore=%v: sqlite or redis" $p.taskStore) -}}
{{- end -}}
{{- if and (eq $p.taskStore "redis") (not $p.redis.url) (not $p.redis.urlSecret.name) -}}
{{- fail "pipeline.taskStore=redis needs pipeline.redis.url (redis://host:6379/0) or pipeline.redis.urlSecret" -}}
{{- end -}}
{{- $scaledBy := include "nimrag.pipeline.scaledBy" . -}}
{{- if and $p.enabled $scaledBy -}}
{{- $why := list -}}
{{- if eq $p.vectorStore "faiss" -}}
{{- $why = append $why "vectorStore=faiss keeps collections in one replica's volume" -}}
{{- else if not (include "nimrag.pipeline.milvusServer" .) -}}
{{- $why = append $why (printf "vectorStore=milvus with milvus.uri=%q runs Milvus Lite inside one process" $p.milvus.uri) -}}
{{- end -}}
{{- if eq $p.taskStore "sqlite" -}}
{{- $why = append $why "taskStore=sqlite keeps upload tasks in one replica's volume" -}}
{{- end -}}
{{- if $why -}}
{{- fail (printf "%s needs stores that every pipeline replica shares, but %s. Set pipeline.vectorStore=milvus with pipeline.milvus.uri=http://<milvus>:19530 and pipeline.taskStore=redis with pipeline.redis.url (docs/scale-out.md), or run one replica." $scaledBy (join "; " $why)) -}}
{{- end -}}
{{- end -}}
{{- range $model := splitList " " (include "nimrag.modelServices" .) -}}
{{- if and $p.enabled (not (get $.Values $model).enabled) (not (get $p.urls $model)) -}}
{{- fail (printf "%s.enabled=false: give the pipeline its URL in pipeline.urls.%s (http://host:port/v1)" $model $model) -}}
{{- end -}}
{{- end -}}
{{- range $name := splitList " " (include "nimrag.services" .) -}}
{{- $svc := get $.Values $name -}}
{{- $requests := dig "resources" "requests" dict $svc -}}
{{- if and $svc.enabled $svc.autoscaling.enabled $svc.autoscaling.targetCPUUtilizationPercentage (not $requests.cpu) -}}
{{- fail (printf "%s.autoscaling scales on CPU utilization: set %s.resources.requests.cpu" $name $name) -}}
{{- end -}}
{{- if and $svc.enabled $svc.autoscaling.enabled $svc.autoscaling.targetMemoryUtilizationPercentage (not $requests.memory) -}}
{{- fail (printf "%s.autoscaling scales on memory utilization: set %s.resources.requests.memory" $name $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A secretKeyRef env entry; (dict "name" ENV "secret" NAME "key" KEY "optional" BOOL). */}}
{{- define "nimrag.secretEnv" -}}
{{- $ref := dict "name" .secret "key" .key -}}
{{- if .optional -}}{{- $_ := set $ref "optional" true -}}{{- end -}}
{{- toJson (dict "name" .name "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}

{{/* A service's environment as a list: what the chart sets, then `settings` (refused where the chart sets the
     same name: the value has its own key). Call with (dict "root" $ "name" "embed" "svc" $svc). */}}
{{- define "nimrag.env" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $prefix := include "nimrag.envPrefix" .name -}}
{{- $secret := include "nimrag.secretName" $root -}}
{{- $keys := $root.Values.apiKeys.secretKeys -}}
{{- $env := list -}}
{{- if eq .name "pipeline" -}}
{{- $p := $svc -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "API_KEYS") "secret" $secret "key" $keys.pipelineApiKeys) | fromJson) -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "SERVICE_API_KEY") "secret" $secret "key" $keys.serviceApiKey) | fromJson) -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "ADMIN_API_KEY") "secret" $secret "key" $keys.adminApiKey "optional" true) | fromJson) -}}
{{- $env = append $env (dict "name" (print $prefix "DATA_PATH") "value" $p.data.mountPath) -}}
{{- range $model := splitList " " (include "nimrag.modelServices" $root) -}}
{{- $env = append $env (dict "name" (printf "%s%s_URL" $prefix (upper $model)) "value" (include "nimrag.modelServiceUrl" (dict "root" $root "name" $model))) -}}
{{- end -}}
{{- $env = append $env (dict "name" (print $prefix "VECTOR_STORE") "value" $p.vectorStore) -}}
{{- if eq $p.vectorStore "milvus" -}}
{{- if $p.milvus.uri -}}
{{- $env = append $env (dict "name" (print $prefix "MILVUS_URI") "value" $p.milvus.uri) -}}
{{- end -}}
{{- if $p.milvus.tokenSecret.name -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "MILVUS_TOKEN") "secret" $p.milvus.tokenSecret.name "key" $p.milvus.tokenSecret.key) | fromJson) -}}
{{- else if $p.milvus.token -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "MILVUS_TOKEN") "secret" (printf "%s-milvus" (include "nimrag.fullname" $root)) "key" "milvus-token") | fromJson) -}}
{{- end -}}
{{- end -}}
{{- $env = append $env (dict "name" (print $prefix "TASK_STORE") "value" $p.taskStore) -}}
{{- if eq $p.taskStore "redis" -}}
{{- if $p.redis.urlSecret.name -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "REDIS_URL") "secret" $p.redis.urlSecret.name "key" $p.redis.urlSecret.key) | fromJson) -}}
{{- else -}}
{{- $env = append $env (dict "name" (print $prefix "REDIS_URL") "value" $p.redis.url) -}}
{{- end -}}
{{- end -}}
{{- if $p.guardrails.persistence.enabled -}}
{{- $env = append $env (dict "name" (print $prefix "GUARDRAILS_PATH") "value" $p.guardrails.mountPath) -}}
{{- $env = append $env (dict "name" (print $prefix "GUARDRAILS_READ_ONLY") "value" (toString $p.guardrails.readOnly)) -}}
{{- end -}}
{{- else -}}
{{- $env = append $env (include "nimrag.secretEnv" (dict "name" (print $prefix "API_KEYS") "secret" $secret "key" $keys.modelServiceApiKeys) | fromJson) -}}
{{- $env = append $env (dict "name" "NIM_CACHE_PATH" "value" $root.Values.modelCache.mountPath) -}}
{{- if $svc.profile -}}
{{- $env = append $env (dict "name" "NIM_MODEL_PROFILE" "value" $svc.profile) -}}
{{- end -}}
{{- if $svc.model -}}
{{- $env = append $env (dict "name" (print $prefix "MODEL") "value" $svc.model) -}}
{{- end -}}
{{- if $svc.triton.url -}}
{{- $env = append $env (dict "name" (print $prefix "TRITON_URL") "value" $svc.triton.url) -}}
{{- end -}}
{{- if $svc.triton.model -}}
{{- $env = append $env (dict "name" (print $prefix "TRITON_MODEL") "value" $svc.triton.model) -}}
{{- end -}}
{{- end -}}
{{- with $root.Values.otel -}}
{{- if .tracesExporter -}}
{{- $env = append $env (dict "name" "OTEL_TRACES_EXPORTER" "value" .tracesExporter) -}}
{{- end -}}
{{- if .endpoint -}}
{{- $env = append $env (dict "name" "OTEL_EXPORTER_OTLP_ENDPOINT" "value" .endpoint) -}}
{{- end -}}
{{- end -}}
{{- $set := list -}}
{{- range $entry := $env -}}{{- $set = append $set $entry.name -}}{{- end -}}
{{- range $field, $value := ($svc.settings | default dict) -}}
{{- $envName := print $prefix (upper $field) -}}
{{- if has $envName $set -}}
{{- fail (printf "%s.settings.%s: the chart sets %s from its own value (see values.yaml)" $.name $field $envName) -}}
{{- end -}}
{{- $env = append $env (dict "name" $envName "value" (include "nimrag.envValue" $value)) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* An HTTP probe on the container's port; (dict "path" PATH "probe" VALUES). */}}
{{- define "nimrag.probe" -}}
httpGet:
  path: {{ .path }}
  port: http
{{ toYaml .probe }}
{{- end -}}

{{/* Writable places on a read-only root filesystem, and each service's state. */}}
{{- define "nimrag.volumes" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $root.Values.scratch.tmpSizeLimit }}
- name: home-cache
  emptyDir:
    sizeLimit: {{ $root.Values.scratch.homeCacheSizeLimit }}
{{- if eq .name "pipeline" }}
- name: data
{{- if include "nimrag.pipeline.localState" $root }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" (include "nimrag.componentName" .)) $svc.data.persistence.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- if $svc.guardrails.persistence.enabled }}
- name: guardrails
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-guardrails" (include "nimrag.componentName" .)) $svc.guardrails.persistence.existingClaim }}
    readOnly: {{ $svc.guardrails.readOnly }}
{{- end }}
{{- else }}
{{- $cache := include "nimrag.cache" . | fromJson }}
- name: model-cache
{{- if $cache.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-cache" (include "nimrag.componentName" .)) $cache.existingClaim }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- if $svc.modelVolume.existingClaim }}
- name: models
  persistentVolumeClaim:
    claimName: {{ $svc.modelVolume.existingClaim }}
    readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{- define "nimrag.volumeMounts" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
- name: tmp
  mountPath: /tmp
- name: home-cache
  mountPath: /home/nim/.cache
{{- if eq .name "pipeline" }}
- name: data
  mountPath: {{ $svc.data.mountPath }}
{{- if $svc.guardrails.persistence.enabled }}
- name: guardrails
  mountPath: {{ $svc.guardrails.mountPath }}
  readOnly: {{ $svc.guardrails.readOnly }}
{{- end }}
{{- else }}
- name: model-cache
  mountPath: {{ $root.Values.modelCache.mountPath }}
{{- if $svc.modelVolume.existingClaim }}
- name: models
  mountPath: {{ $svc.modelVolume.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* A model service's cache volume: modelCache.persistence with the service's `cache` over it, as JSON. */}}
{{- define "nimrag.cache" -}}
{{- mergeOverwrite (deepCopy .root.Values.modelCache.persistence) (deepCopy (.svc.cache | default dict)) | toJson -}}
{{- end -}}

{{/* Resources, with the GPUs a gpu.enabled service asks for. */}}
{{- define "nimrag.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if dig "gpu" "enabled" false . -}}
{{- $limits := $resources.limits | default dict -}}
{{- $_ := set $limits "nvidia.com/gpu" (int64 .gpu.count) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* A PVC; (dict "root" $ "component" NAME "suffix" SUFFIX "persistence" VALUES "keep" BOOL). */}}
{{- define "nimrag.pvc" -}}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ printf "%s-%s" (include "nimrag.componentName" (dict "root" .root "name" .component)) .suffix }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "nimrag.componentLabels" (dict "root" .root "name" .component) | nindent 4 }}
  {{- if .keep }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
spec:
  accessModes:
    {{- toYaml .persistence.accessModes | nindent 4 }}
  {{- with .persistence.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ .persistence.size }}
{{- end -}}
