{{/* Chart name. */}}
{{- define "kubeforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name (63 chars max, DNS-1123). */}}
{{- define "kubeforge.fullname" -}}
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

{{- define "kubeforge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubeforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubeforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kubeforge.labels" -}}
helm.sh/chart: {{ include "kubeforge.chart" . }}
{{ include "kubeforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubeforge
{{- end }}

{{- define "kubeforge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubeforge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubeforge.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "kubeforge.workloadImage" -}}
{{- printf "%s:%s" .Values.workloadImage.repository (default .Chart.AppVersion .Values.workloadImage.tag) }}
{{- end }}

{{/* The Kubeforge kinds' plurals (kubeforge.api.kinds.KINDS; a chart test keeps them in sync). */}}
{{- define "kubeforge.plurals" -}}
- trainingjobs
- finetunes
- vectorindexes
- servingendpoints
- evalruns
{{- end }}

{{/*
Rules the operator needs in every namespace it watches. Each one is traced to a call in
tests/chart/test_chart.py (OPERATOR_CALLS).
*/}}
{{- define "kubeforge.namespacedRules" -}}
{{- $plurals := include "kubeforge.plurals" . | fromYamlArray }}
# kopf lists and watches the resources, patches annotations (progress) and finalizers;
# Cluster.get_resource reads dependencies.
- apiGroups: ["kubeforge.dev"]
  resources:
  {{- range $plurals }}
  - {{ . }}
  {{- end }}
  verbs: ["get", "list", "watch", "patch", "update"]
# kopf patches status through the status subresource.
- apiGroups: ["kubeforge.dev"]
  resources:
  {{- range $plurals }}
  - {{ . }}/status
  {{- end }}
  verbs: ["get", "patch", "update"]
# Children carry ownerReferences with blockOwnerDeletion: needed where OwnerReferencesPermissionEnforcement is on.
- apiGroups: ["kubeforge.dev"]
  resources:
  {{- range $plurals }}
  - {{ . }}/finalizers
  {{- end }}
  verbs: ["update"]
# Attempts are KubeRay RayJobs (RayServices for ServingEndpoint).
- apiGroups: ["ray.io"]
  resources: ["rayjobs", "rayservices"]
  verbs: ["get", "list", "watch", "create", "delete"]
# kopf.event() posts core/v1 Events; events.k8s.io for newer clients.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Cluster-scoped reads kopf does for resource and namespace discovery. */}}
{{- define "kubeforge.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end }}
