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

{{/* The port of a TCP listen address: dict "cfg" config "name" option. Fails on a unix
socket or a missing value: behind a Service meshguard needs host:port. */}}
{{- define "meshguard.port" -}}
{{- $addr := toString (index .cfg .name) -}}
{{- if not (regexMatch "^[^/]*:[0-9]+$" $addr) -}}
{{- fail (printf "config.%s %q: this chart runs meshguard behind a Service, so it needs host:port" .name $addr) -}}
{{- end -}}
{{- regexFind "[0-9]+$" $addr -}}
{{- end }}

{{/* "true" when xDS and the access-log service are on (config.xds-listen set, not "off"). */}}
{{- define "meshguard.xdsEnabled" -}}
{{- $x := toString (index .Values.config "xds-listen") -}}
{{- if and $x (ne $x "off") (ne $x "<nil>") }}true{{ end -}}
{{- end }}

{{/* "true" when config.admin-listen is a TCP address beyond loopback (exposed on the Service). */}}
{{- define "meshguard.adminRemote" -}}
{{- $a := toString (index .Values.config "admin-listen") -}}
{{- $host := regexReplaceAll ":[0-9]+$" $a "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if and $a (ne $a "<nil>") (not (hasPrefix "unix://" $a)) (not (has $host (list "127.0.0.1" "localhost" "::1"))) }}true{{ end -}}
{{- end }}

{{/* meshguard's config file: .Values.config plus what the chart derives (values.yaml). */}}
{{- define "meshguard.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $svc := printf "%s.%s.svc.cluster.local" (include "meshguard.fullname" .) .Release.Namespace -}}
{{- if include "meshguard.xdsEnabled" . -}}
{{- if not (hasKey $cfg "xds-ext-proc-address") -}}
{{- $_ := set $cfg "xds-ext-proc-address" (printf "%s:%s" $svc (include "meshguard.port" (dict "cfg" $cfg "name" "listen"))) -}}
{{- end -}}
{{- if not (hasKey $cfg "xds-access-log-address") -}}
{{- $_ := set $cfg "xds-access-log-address" (printf "%s:%s" $svc (include "meshguard.port" (dict "cfg" $cfg "name" "xds-listen"))) -}}
{{- end -}}
{{- end -}}
{{- if .Values.tls.secretName -}}
{{- range $prefix := list "" "xds-" -}}
{{- $_ := set $cfg (printf "%stls-cert" $prefix) (get $cfg (printf "%stls-cert" $prefix) | default "/etc/meshguard/tls/tls.crt") -}}
{{- $_ := set $cfg (printf "%stls-key" $prefix) (get $cfg (printf "%stls-key" $prefix) | default "/etc/meshguard/tls/tls.key") -}}
{{- $_ := set $cfg (printf "%stls-client-ca" $prefix) (get $cfg (printf "%stls-client-ca" $prefix) | default "/etc/meshguard/tls/ca.crt") -}}
{{- end -}}
{{- else if not (hasKey $cfg "insecure-listen") -}}
{{- $_ := set $cfg "insecure-listen" true -}}
{{- end -}}
{{- toYaml $cfg -}}
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
    checksum/config: {{ include (print $.Template.BasePath "/config.yaml") . | sha256sum }}
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
    - serve
    - --config
    - /etc/meshguard/config.yaml
    envFrom:
    - configMapRef:
        name: {{ include "meshguard.fullname" . }}-otel
    ports:
    - name: grpc-extproc
      containerPort: {{ include "meshguard.port" (dict "cfg" .Values.config "name" "listen") }}
      protocol: TCP
    {{- if include "meshguard.xdsEnabled" . }}
    - name: grpc-xds
      containerPort: {{ include "meshguard.port" (dict "cfg" .Values.config "name" "xds-listen") }}
      protocol: TCP
    {{- end }}
    - name: http-health
      containerPort: {{ include "meshguard.port" (dict "cfg" .Values.config "name" "health-listen") }}
      protocol: TCP
    {{- if include "meshguard.adminRemote" . }}
    - name: http-admin
      containerPort: {{ include "meshguard.port" (dict "cfg" .Values.config "name" "admin-listen") }}
      protocol: TCP
    {{- end }}
    # The health listener serves only /healthz, /readyz and /metrics, in plain HTTP
    # whether or not ext_proc uses TLS.
    startupProbe:
      httpGet:
        path: /healthz
        port: http-health
      {{- toYaml .Values.probes.startup | nindent 6 }}
    readinessProbe:
      httpGet:
        path: /readyz
        port: http-health
      {{- toYaml .Values.probes.readiness | nindent 6 }}
    livenessProbe:
      httpGet:
        path: /healthz
        port: http-health
      {{- toYaml .Values.probes.liveness | nindent 6 }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
    - name: data
      mountPath: {{ required "config.data-dir: the chart mounts the data volume there" (index .Values.config "data-dir") }}
    - name: config
      mountPath: /etc/meshguard
      readOnly: true
    {{- with .Values.tls.secretName }}
    - name: tls
      mountPath: /etc/meshguard/tls
      readOnly: true
    {{- end }}
  volumes:
  - name: config
    configMap:
      name: {{ include "meshguard.fullname" . }}-config
  {{- with .Values.tls.secretName }}
  - name: tls
    secret:
      secretName: {{ . }}
  {{- end }}
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
