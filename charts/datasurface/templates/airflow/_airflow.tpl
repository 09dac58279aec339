{{/* Env shared by every Airflow container. */}}
{{- define "datasurface.airflow.env" -}}
{{- $secret := include "datasurface.airflow.secretName" . -}}
{{- $dbSecret := default (include "datasurface.database.secretName" .) .Values.airflow.database.secretName -}}
{{- /* Airflow's LocalExecutor, with a stop that cannot hang (files/airflow/datasurface_executor.py) */}}
- name: AIRFLOW__CORE__EXECUTOR
  value: datasurface_executor.LocalExecutor
- name: PYTHONPATH
  value: {{ include "datasurface.airflow.executorPath" . }}
- name: AIRFLOW__CORE__LOAD_EXAMPLES
  value: "False"
- name: AIRFLOW__CORE__DAGS_FOLDER
  value: {{ .Values.airflow.dagsFolder | quote }}
- name: AIRFLOW__CORE__DAG_IGNORE_FILE_SYNTAX
  value: glob
- name: AIRFLOW__CORE__HOSTNAME_CALLABLE
  value: airflow.utils.net.get_host_ip_address
- name: AIRFLOW__CORE__EXECUTION_API_SERVER_URL
  value: {{ printf "http://%s:%d/execution/" (include "datasurface.airflow.name" (dict "ctx" . "component" "api-server")) (int .Values.airflow.apiServer.service.port) | quote }}
{{- if eq .Values.airflow.auth.manager "fab" }}
- name: AIRFLOW__CORE__AUTH_MANAGER
  value: airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager
{{- else }}
- name: AIRFLOW__CORE__AUTH_MANAGER
  value: airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
- name: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS
  value: {{ printf "%s:admin" .Values.airflow.adminUsername | quote }}
- name: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE
  value: /opt/airflow/auth/passwords.json
{{- end }}
- name: AIRFLOW_CONFIG
  value: /tmp/airflow.cfg
{{- with .Values.airflow.ingress }}
{{- if and .enabled .host }}
- name: AIRFLOW__API__BASE_URL
  value: {{ printf "%s://%s/" (ternary "https" "http" (not (empty .tls.secretName))) .host | quote }}
{{- end }}
{{- end }}
- name: AIRFLOW__CORE__FERNET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: fernet-key
- name: AIRFLOW__API__SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: api-secret-key
- name: AIRFLOW__API_AUTH__JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: jwt-secret
{{- /* The login reaches the database drivers (libpq for psycopg2, and asyncpg) as PGUSER/PGPASSWORD,
       never inside the URL: a password needs no escaping there, and none is in the manifest. */}}
- name: PGUSER
  valueFrom:
    secretKeyRef:
      name: {{ $dbSecret }}
      key: {{ .Values.airflow.database.usernameKey }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $dbSecret }}
      key: {{ .Values.airflow.database.passwordKey }}
{{- include "datasurface.database.tlsEnv" . }}
- name: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN
  value: {{ printf "postgresql+psycopg2://%s:%s/%s" (include "datasurface.database.host" .) (include "datasurface.database.port" .) (include "datasurface.database.airflow" .) | quote }}
{{ include "datasurface.airflow.scaleEnv" . }}
{{- with .Values.airflow.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The Slack webhook env (scheduler, dag-processor), when configured. */}}
{{- define "datasurface.airflow.slackEnv" -}}
{{- with (include "datasurface.slackSecret" . | fromJson) }}
- name: DATASURFACE_SLACK_WEBHOOK
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{/* The mounts of every Airflow container: /tmp, the task logs, the database CA. */}}
{{- define "datasurface.airflow.mounts" -}}
- name: tmp
  mountPath: /tmp
- name: logs
  mountPath: /opt/airflow/logs
- name: executor
  mountPath: {{ include "datasurface.airflow.executorPath" . }}
  readOnly: true
{{- include "datasurface.database.caMount" . }}
{{- with .Values.airflow.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Their volumes: the task logs on a claim shared by the components when airflow.logs.persistence is on. */}}
{{- define "datasurface.airflow.volumes" -}}
{{- $logs := .Values.airflow.logs.persistence -}}
- name: tmp
  emptyDir: {}
- name: logs
  {{- if $logs.enabled }}
  persistentVolumeClaim:
    claimName: {{ $logs.existingClaim | default (include "datasurface.airflow.name" (dict "ctx" . "component" "logs")) }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: executor
  configMap:
    name: {{ include "datasurface.airflow.name" (dict "ctx" . "component" "executor") }}
    defaultMode: 0444
{{- include "datasurface.database.caVolume" . }}
{{- with .Values.airflow.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* How much Airflow runs at once: read by the scheduler (parallelism) and when DAGs are parsed (max
     active tasks of a DAG); in the shared env before extraEnv, which may still override them. */}}
{{- define "datasurface.airflow.scaleEnv" -}}
- name: AIRFLOW__CORE__PARALLELISM
  value: {{ .Values.airflow.parallelism | quote }}
- name: AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG
  value: {{ .Values.airflow.maxActiveTasksPerDag | quote }}
{{- end -}}

{{/* The scheduler's init container creating (or resizing) the job tasks' pool before it schedules them:
     a task naming a pool that does not exist would never run. */}}
{{- define "datasurface.airflow.createPool" -}}
{{- with .Values.airflow.pool }}
{{- if .name }}
- name: create-pool
  image: {{ include "datasurface.airflowImage" $ }}
  imagePullPolicy: {{ $.Values.airflow.image.pullPolicy }}
  args: [pools, set, {{ .name | quote }}, {{ .slots | quote }}, "DataSurface job tasks"{{ if .includeDeferred }}, --include-deferred{{ end }}]
  securityContext:
    {{- toYaml $.Values.airflow.containerSecurityContext | nindent 4 }}
  env:
    {{- include "datasurface.airflow.env" $ | nindent 4 }}
  {{- with $.Values.airflow.initContainers.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "datasurface.airflow.mounts" $ | nindent 4 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Init container: wait until the migration Job has brought the schema to this Airflow's head. */}}
{{- define "datasurface.airflow.waitForMigrations" -}}
- name: wait-for-migrations
  image: {{ include "datasurface.airflowImage" . }}
  imagePullPolicy: {{ .Values.airflow.image.pullPolicy }}
  args: [db, check-migrations, --migration-wait-timeout, "900"]
  securityContext:
    {{- toYaml .Values.airflow.containerSecurityContext | nindent 4 }}
  env:
    {{- include "datasurface.airflow.env" . | nindent 4 }}
    - name: CONNECTION_CHECK_MAX_COUNT
      value: "100"
  {{- with .Values.airflow.initContainers.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "datasurface.airflow.mounts" . | nindent 4 }}
{{- end -}}

{{/* The DAGs folder: one projected volume, each platform ConfigMap as its own sub-folder, plus an
     .airflowignore that hides the volume's `..data` bookkeeping folders (without it Airflow's DAG walk
     follows the symlinks, sees the same folder twice and stops with "Detected recursive loop"). */}}
{{- define "datasurface.airflow.dagsVolume" -}}
- name: dags
  projected:
    defaultMode: 0444
    sources:
      - configMap:
          name: {{ include "datasurface.airflow.name" (dict "ctx" . "component" "dags-root") }}
      {{- range .Values.platforms }}
      - configMap:
          name: {{ include "datasurface.platform.configMapName" (dict "ctx" $ "platform" .) }}
          items:
            - key: datasurface_dags.py
              path: {{ lower .name }}/datasurface_dags.py
            - key: platform.json
              path: {{ lower .name }}/platform.json
      {{- end }}
{{- end -}}

{{/* Rolls the pods that read the DAGs when a platform is added, changed or removed. */}}
{{- define "datasurface.airflow.dagsChecksum" -}}
checksum/dags: {{ include (print .Template.BasePath "/dags/configmaps.yaml") . | sha256sum }}
{{- end -}}

{{- define "datasurface.airflow.podSpecCommon" -}}
serviceAccountName: {{ include "datasurface.airflow.serviceAccountName" . }}
securityContext:
  {{- toYaml .Values.airflow.podSecurityContext | nindent 2 }}
{{- with .Values.airflow.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.airflow.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.airflow.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.airflow.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The migration Job's spec; its hash names the Job. */}}
{{- define "datasurface.airflow.migrateSpec" -}}
{{- $af := .Values.airflow -}}
spec:
  backoffLimit: {{ $af.migrations.backoffLimit }}
  {{- if not (kindIs "invalid" $af.migrations.ttlSecondsAfterFinished) }}
  ttlSecondsAfterFinished: {{ $af.migrations.ttlSecondsAfterFinished }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "datasurface.selectorLabels" (dict "ctx" . "component" "migrate") | nindent 8 }}
      {{- with .Values.airflow.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "datasurface.airflow.podSpecCommon" . | nindent 6 }}
      automountServiceAccountToken: false
      restartPolicy: Never
      containers:
        - name: migrate
          image: {{ include "datasurface.airflowImage" . }}
          imagePullPolicy: {{ $af.image.pullPolicy }}
          args: [db, migrate]
          securityContext:
            {{- toYaml $af.containerSecurityContext | nindent 12 }}
          env:
            {{- include "datasurface.airflow.env" . | nindent 12 }}
            {{- /* the image's entrypoint waits for the database (3 s a try) before migrating */}}
            - name: CONNECTION_CHECK_MAX_COUNT
              value: "100"
          {{- with $af.migrations.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            {{- include "datasurface.airflow.mounts" . | nindent 12 }}
      volumes:
        {{- include "datasurface.airflow.volumes" . | nindent 8 }}
{{- end -}}

{{/* Where the executor's module is mounted in the Airflow containers (on their PYTHONPATH). */}}
{{- define "datasurface.airflow.executorPath" -}}
/opt/datasurface/airflow
{{- end -}}
