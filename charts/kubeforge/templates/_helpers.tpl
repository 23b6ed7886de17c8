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
Rules the operator needs in every namespace it watches: exactly the calls in tests/chart/test_chart.py
(OPERATOR_CALLS), each traced to the code that makes it; a test fails on anything missing or superfluous.
*/}}
{{- define "kubeforge.namespacedRules" -}}
{{- $plurals := include "kubeforge.plurals" . | fromYamlArray }}
# kopf lists and watches the resources and patches its annotations and finalizer; Cluster.get_resource
# reads dependencies.
- apiGroups: ["kubeforge.dev"]
  resources:
  {{- range $plurals }}
  - {{ . }}
  {{- end }}
  verbs: ["get", "list", "watch", "patch"]
# Status is written with merge patches of the status subresource.
- apiGroups: ["kubeforge.dev"]
  resources:
  {{- range $plurals }}
  - {{ . }}/status
  {{- end }}
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion: needed where OwnerReferencesPermissionEnforcement is on.
- apiGroups: ["kubeforge.dev"]
  resources:
  {{- range $plurals }}
  - {{ . }}/finalizers
  {{- end }}
  verbs: ["update"]
# Children: KubeRay RayJobs (batch kinds) and RayServices (ServingEndpoint), created and updated by
# server-side apply (PATCH), watched, deleted.
- apiGroups: ["ray.io"]
  resources: ["rayjobs", "rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs/status", "rayservices/status"]
  verbs: ["get"]
# kopf.event() and the controllers' Events (core/v1, POST only).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.settings.workloadEnvSecretRequired }}
# kubeforge.prerequisites: whether the workload Secret exists (that one name only; its data is not used).
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ .Values.settings.workloadEnvSecret | quote }}]
  verbs: ["get"]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads of kopf's scanning: CRDs always; namespaces only when not cluster-wide. */}}
{{- define "kubeforge.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.settings.watchNamespace }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
