{{/*
The application's name, full name and labels (as `helm create` makes them).
*/}}
{{- define "example-app.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "example-app.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "example-app.selectorLabels" -}}
app.kubernetes.io/name: {{ include "example-app.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "example-app.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "example-app.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
The application's image, from global.image (and global.imageRegistry), the values dbmigrate reads
for its Job and helm test: the migration always runs the revisions the Deployment's pods ship. The
wait init container gets this reference explicitly.
*/}}
{{- define "example-app.image" -}}
{{- $image := .Values.global.image -}}
{{- if not (kindIs "string" $image.tag) -}}
{{- fail "global.image.tag must be a string: quote it (\"1.10\"), YAML reads 1.10 as the number 1.1" -}}
{{- end -}}
{{- with .Values.global.imageRegistry }}{{ trimSuffix "/" . }}/{{ end -}}
{{- $image.repository }}:{{ $image.tag -}}
{{- with $image.digest }}@{{ . }}{{ end -}}
{{- end -}}
