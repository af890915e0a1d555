{{/*
Names. With the release named like the chart (`helm install podometer …`) every object has the
kustomize base's name; another release name is prefixed to the chart's.
*/}}
{{- define "podometer.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "podometer.priorityClassName" -}}
{{- if .Values.priorityClass.name -}}
{{- .Values.priorityClass.name -}}
{{- else if .Values.priorityClass.create -}}
{{- printf "%s-node-agent" (include "podometer.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
Labels on every object's metadata: the kustomize base's two, plus Helm's own (which chart
rendered it, and that Helm manages it). Selectors and the pod template carry only the name.
*/}}
{{- define "podometer.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/component: node-agent
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "podometer.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
{{- end -}}

{{/*
The agent's config before extraConfig: what deploy/kubernetes/base/agent.yaml says, with the
processors the values turn on. Only what it reads is mounted, read-only, under /host: proc, the
cgroup filesystem and the runtimes' bundle directories; hostPID makes /host/proc show the pids
in cgroup.procs.
*/}}
{{- define "podometer.baseConfig" -}}
{{- $rf := .Values.metadata.runtimeFiles -}}
{{- $k8sApi := .Values.metadata.k8sApi.enabled -}}
{{- $processors := list -}}
{{- if $rf.enabled }}{{ $processors = append $processors "runtime_files" }}{{ end -}}
{{- if $k8sApi }}{{ $processors = append $processors "k8s_api" }}{{ end -}}
interval: ${env:PODOMETER_INTERVAL:-10s}
shutdown_timeout: 5s
node_name: ${env:NODE_NAME}
# The node's name, not the pod's hostname (uname in the pod's own UTS namespace).
host_name: ${env:NODE_NAME}
health:
  endpoint: 0.0.0.0:13133
sources:
  cgroups:
    root: /host/sys/fs/cgroup
  netns:
    proc_root: /host/proc
    # Turned off by itself (one log line) unless the pod is in the host network namespace
    # with CAP_NET_ADMIN: hostPeers.enabled.
    resolve_host_peer: true
{{- if $processors }}
processors:
{{- if $rf.enabled }}
  runtime_files:
    containerd_state: {{ printf "/host%s" $rf.containerdState | quote }}
    storage_runroot: {{ printf "/host%s" $rf.storageRunroot | quote }}
    storage_root: {{ printf "/host%s" $rf.storageRoot | quote }}
{{- end }}
{{- if $k8sApi }}
  k8s_api: {}
{{- end }}
{{- end }}
exporters:
  # Endpoint, protocol, headers and TLS from the OTEL_EXPORTER_OTLP_* variables.
  otlp: {}
pipelines:
  default:
    sources: [cgroups, netns]
    processors: {{ toJson $processors }}
    exporters: [otlp]
{{- end -}}

{{/*
Deep merge of (list DST SRC) into DST: maps key by key, anything else replaced, so that a
false, 0 or empty value in extraConfig overrides too (sprig's mergeOverwrite skips those).
*/}}
{{- define "podometer.merge" -}}
{{- $dst := index . 0 -}}
{{- range $key, $value := index . 1 -}}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) -}}
{{- include "podometer.merge" (list (get $dst $key) $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The config file's text, as the ConfigMap holds it. */}}
{{- define "podometer.configText" -}}
{{- $config := include "podometer.baseConfig" . | fromYaml -}}
{{- include "podometer.merge" (list $config (deepCopy .Values.extraConfig)) -}}
{{- printf "%s\n" (toYaml $config) -}}
{{- end -}}

{{/*
The ConfigMap's name: <fullname>-config and the hash suffix kustomize's configMapGenerator
gives it (the first 10 hex digits of the SHA-256 of its kind, an empty name and its data as
JSON, with 0 1 3 a e spelt g h k m t: what kubectl 1.32's kustomize computes, checked by
tests/helm_chart.rs), so a changed config gives a new name and rolls the DaemonSet.
*/}}
{{- define "podometer.configMapName" -}}
{{- $name := printf "%s-config" (include "podometer.fullname" .) -}}
{{- $json := dict "kind" "ConfigMap" "name" "" "data" (dict "podometer.yaml" (include "podometer.configText" .)) | toJson -}}
{{- $hash := sha256sum $json | trunc 10 | replace "0" "g" | replace "1" "h" | replace "3" "k" | replace "a" "m" | replace "e" "t" -}}
{{- printf "%s-%s" $name $hash -}}
{{- end -}}
