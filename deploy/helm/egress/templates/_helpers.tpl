{{/*
The chart's name, or nameOverride.
*/}}
{{- define "egress.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The resources' name: fullnameOverride, else the release name when it already
contains the chart's name, else "<release>-<chart>". 63 characters at most.
*/}}
{{- define "egress.fullname" -}}
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
"name-version" for the helm.sh/chart label.
*/}}
{{- define "egress.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels that select the agent's pods (the DaemonSet selector, the Service,
the monitors). Never change them in an upgrade: a DaemonSet's selector is immutable.
*/}}
{{- define "egress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "egress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "egress.labels" -}}
helm.sh/chart: {{ include "egress.chart" . }}
{{ include "egress.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: egress
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The ServiceAccount the agent runs as.
*/}}
{{- define "egress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "egress.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest, else repository:tag (tag defaults to
the chart's appVersion).
*/}}
{{- define "egress.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
True (non-empty) when the cluster serves the appArmorProfile pod field (1.30+).
`helm template` assumes the Kubernetes version of the helm binary unless given
--kube-version.
*/}}
{{- define "egress.appArmorField" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/*
The agent's configuration file, agent.yaml, as YAML: the settings derived from
the values, with extraConfig merged over them. "${VAR}" is expanded by the
agent from its environment (NODE_NAME, HOST_IP from the downward API).
*/}}
{{- define "egress.agentConfig" -}}
{{- $v := .Values }}
{{- $k8s := dict
    "nodeName" "${NODE_NAME}"
    "cgroupRoot" $v.cgroupRoot
    "cgroupDriver" $v.cgroupDriver
    "meshConfigMap" $v.istio.meshConfigMap
    "excludedNamespaces" $v.excludedNamespaces
    "podLabels" $v.trustPodLabels }}
{{- $c := dict
    "outboundTrafficPolicy" (dict "mode" $v.mode)
    "audit" $v.audit
    "auditNamespaces" $v.auditNamespaces
    "clusterCidrs" $v.clusterCidrs
    "metricsAddress" (printf "0.0.0.0:%d" (int $v.metrics.port))
    "instance" "egress"
    "pinDir" "/sys/fs/bpf/egress"
    "stateDir" "/var/lib/egress"
    "runDir" "/run/egress"
    "procPath" "/host/proc"
    "accessLog" (dict "path" "-")
    "kubernetes" $k8s
    "rootNamespace" $v.istio.rootNamespace }}
{{- if $v.dns.enabled }}
{{- $dns := dict "listen" (list (printf "${HOST_IP}:%d" (int $v.dns.port))) }}
{{- with $v.dns.upstream }}
{{- $_ := set $dns "upstream" . }}
{{- end }}
{{- $_ := set $c "dns" $dns }}
{{- end }}
{{- $merged := mustMergeOverwrite $c (deepCopy $v.extraConfig) }}
{{- toYaml $merged }}
{{- end }}
