{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "meshguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name of the release's objects. */}}
{{- define "meshguard.fullname" -}}
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

{{- define "meshguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "meshguard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "meshguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "meshguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "meshguard.claimName" -}}
{{- default (printf "%s-data" (include "meshguard.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/* Arguments of meshguard serve. */}}
{{- define "meshguard.args" -}}
- serve
- --listen
- {{ printf "0.0.0.0:%d" (int .Values.ports.extproc) | quote }}
- --admin-listen
{{- if .Values.admin.allowRemote }}
- {{ printf "0.0.0.0:%d" (int .Values.ports.admin) | quote }}
- --admin-allow-remote
{{- else }}
- {{ printf "127.0.0.1:%d" (int .Values.ports.admin) | quote }}
{{- end }}
{{- if .Values.xds.enabled }}
- --xds-listen
- {{ printf "0.0.0.0:%d" (int .Values.ports.xds) | quote }}
{{- end }}
- --data-dir
- /var/lib/meshguard
{{- with .Values.meshguard.defaultMode }}
- --default-mode
- {{ . | quote }}
{{- end }}
{{- with .Values.meshguard.learnWindow }}
- --learn-window
- {{ . | quote }}
{{- end }}
{{- if gt (int .Values.meshguard.learnMinRequests) 0 }}
- --learn-min-requests
- {{ .Values.meshguard.learnMinRequests | quote }}
{{- end }}
{{- with .Values.meshguard.afterLearning }}
- --after-learning
- {{ . | quote }}
{{- end }}
{{- range .Values.meshguard.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* The pod template shared by the Deployment and the DaemonSet. */}}
{{- define "meshguard.podTemplate" -}}
metadata:
  labels:
    {{- include "meshguard.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/otel: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "meshguard.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
  - name: meshguard
    image: {{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) | quote }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    args:
      {{- include "meshguard.args" . | nindent 6 }}
    envFrom:
    - configMapRef:
        name: {{ include "meshguard.fullname" . }}-otel
    ports:
    - name: grpc-extproc
      containerPort: {{ .Values.ports.extproc }}
      protocol: TCP
    {{- if .Values.xds.enabled }}
    - name: grpc-xds
      containerPort: {{ .Values.ports.xds }}
      protocol: TCP
    {{- end }}
    {{- if .Values.admin.allowRemote }}
    - name: http-admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
    {{- end }}
    startupProbe:
      grpc:
        port: {{ .Values.ports.extproc }}
      {{- toYaml .Values.probes.startup | nindent 6 }}
    readinessProbe:
      grpc:
        port: {{ .Values.ports.extproc }}
      {{- toYaml .Values.probes.readiness | nindent 6 }}
    livenessProbe:
      grpc:
        port: {{ .Values.ports.extproc }}
      {{- toYaml .Values.probes.liveness | nindent 6 }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
    - name: data
      mountPath: /var/lib/meshguard
  volumes:
  - name: data
    {{- if and (eq .Values.kind "Deployment") .Values.persistence.enabled }}
    persistentVolumeClaim:
      claimName: {{ include "meshguard.claimName" . }}
    {{- else }}
    emptyDir:
      sizeLimit: {{ .Values.emptyDirSizeLimit }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
