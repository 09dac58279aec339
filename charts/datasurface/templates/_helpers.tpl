{{/* Names ---------------------------------------------------------------------------------------- */}}
{{- define "datasurface.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "datasurface.fullname" -}}
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

{{/* "<fullname>-<suffix>" within `limit` characters (default 63: Services, Jobs and label values).
     When too long, the fullname is cut and a hash of it added, so names stay unique per release and the
     suffix still says which component it is; a suffix too long even for that is cut and hashed whole.
     Call with (dict "ctx" $ "suffix" "airflow-scheduler") and optionally "limit" 52. */}}
{{- define "datasurface.componentName" -}}
{{- $limit := int (default 63 .limit) -}}
{{- $full := include "datasurface.fullname" .ctx -}}
{{- $name := printf "%s-%s" $full .suffix -}}
{{- if le (len $name) $limit -}}
{{- $name -}}
{{- else if le (len .suffix) (sub $limit 16) -}}
{{- $keep := int (sub (sub $limit (len .suffix)) 8) -}}
{{- printf "%s-%s-%s" (trunc $keep $full | trimSuffix "-") (sha256sum $full | trunc 6) .suffix -}}
{{- else -}}
{{- printf "%s-%s" (trunc (int (sub $limit 9)) $name | trimSuffix "-") (sha256sum $name | trunc 8) -}}
{{- end -}}
{{- end -}}

{{/* Labels: helm.sh/chart and version never in selectors. Call with (dict "ctx" $ "component" "x"). */}}
{{- define "datasurface.selectorLabels" -}}
app.kubernetes.io/name: {{ include "datasurface.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "datasurface.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "datasurface.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: datasurface
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images ---------------------------------------------------------------------------------------- */}}
{{/* "repository:tag"; an empty tag fails naming its key, so no pod is ever made with "repo:".
     Call with (dict "image" .Values.x.image "key" "x.image"). */}}
{{- define "datasurface.image" -}}
{{- $tag := .image.tag | default "" | toString | trim -}}
{{- if not $tag -}}
{{- fail (printf "%s.tag is empty: set the image tag (a version, e.g. --set %s.tag=1.2.3)" .key .key) -}}
{{- end -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{- define "datasurface.jobImage" -}}
{{- include "datasurface.image" (dict "image" .Values.image "key" "image") -}}
{{- end -}}

{{- define "datasurface.airflowImage" -}}
{{- include "datasurface.image" (dict "image" .Values.airflow.image "key" "airflow.image") -}}
{{- end -}}

{{- define "datasurface.postgresqlImage" -}}
{{- include "datasurface.image" (dict "image" .Values.postgresql.image "key" "postgresql.image") -}}
{{- end -}}

{{/* "true" when the simulator runs: `auto` runs it only against the bundled PostgreSQL (it creates and
     changes tables in the source database, which must never be a user's own). */}}
{{- define "datasurface.simulator.enabled" -}}
{{- $on := toString .Values.simulator.enabled -}}
{{- if or (eq $on "true") (and (eq $on "auto") .Values.postgresql.enabled) -}}true{{- end -}}
{{- end -}}

{{/* Fails naming the platform when its schedule (key "schedule" or "infrastructureSchedule") is not one
     Airflow accepts. Call with (dict "platform" . "key" "schedule"). */}}
{{- define "datasurface.checkSchedule" -}}
{{- $value := get .platform .key -}}
{{- with include "datasurface.scheduleProblem" $value -}}
{{- fail (printf "platform %q: %s %q: %s" $.platform.name $.key $value .) -}}
{{- end -}}
{{- end -}}

{{/* Why a schedule is not one Airflow accepts ("" when it is): null, a preset, or 5 cron fields. */}}
{{- define "datasurface.scheduleProblem" -}}
{{- $presets := list "@once" "@continuous" "@hourly" "@daily" "@midnight" "@weekly" "@monthly" "@quarterly" "@yearly" "@annually" -}}
{{- if kindIs "invalid" . -}}
{{- else if not (kindIs "string" .) -}}must be a string or null
{{- else if hasPrefix "@" . -}}
{{- if not (has . $presets) -}}unknown preset (known: {{ join " " $presets }}){{- end -}}
{{- else -}}
{{- $fields := splitList " " (regexReplaceAll "\\s+" (trim .) " ") -}}
{{- if ne (len $fields) 5 -}}not a cron expression (5 fields: minute hour day-of-month month day-of-week) or a preset such as @hourly
{{- else -}}
{{- $names := list "minute" "hour" "day of month" "month" "day of week" -}}
{{- $low := list 0 0 1 1 0 -}}
{{- $high := list 59 23 31 12 7 -}}
{{- $problem := "" -}}
{{- range $i, $field := $fields -}}
{{- range $part := splitList "," $field -}}
{{- if not (regexMatch "^(\\*|\\?|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?|L|[0-9]*[LW]|[0-9]+#[1-5])(/[1-9][0-9]*)?$" $part) -}}
{{- $problem = $problem | default (printf "%s field %q is not valid cron syntax" (index $names $i) $part) -}}
{{- else if not (regexMatch "#" $part) -}}
{{- range $n := regexFindAll "[0-9]+" (regexReplaceAll "/.*$" $part "") -1 -}}
{{- if or (lt (atoi $n) (index $low $i)) (gt (atoi $n) (index $high $i)) -}}
{{- $problem = $problem | default (printf "%s %s is out of range %d-%d" (index $names $i) $n (index $low $i) (index $high $i)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $problem -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Databases ------------------------------------------------------------------------------------- */}}
{{- define "datasurface.postgresql.fullname" -}}
{{- /* a StatefulSet: 52 leaves room for the controller-revision-hash label Kubernetes adds to its pods */ -}}
{{- include "datasurface.componentName" (dict "ctx" . "suffix" "postgresql" "limit" 52) -}}
{{- end -}}

{{/* The Secret holding the database logins (bundled or external). */}}
{{- define "datasurface.database.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- default (include "datasurface.postgresql.fullname" .) .Values.postgresql.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "datasurface.database.host" -}}
{{- if .Values.postgresql.enabled -}}
{{- include "datasurface.postgresql.fullname" . -}}
{{- else -}}
{{- .Values.externalDatabase.host -}}
{{- end -}}
{{- end -}}

{{- define "datasurface.database.port" -}}
{{- if .Values.postgresql.enabled -}}
{{- .Values.postgresql.service.port -}}
{{- else -}}
{{- .Values.externalDatabase.port -}}
{{- end -}}
{{- end -}}

{{/* TLS to an external server: libpq's env for every client (psycopg2 and asyncpg read the same), and
     the CA certificate's volume and mount. Nothing for the bundled server (it serves no TLS). */}}
{{- define "datasurface.database.caFolder" -}}
/etc/datasurface/db-ca
{{- end -}}

{{- define "datasurface.database.tls" -}}
{{- $tls := dict -}}
{{- if not .Values.postgresql.enabled -}}
{{- $_ := set $tls "PGSSLMODE" .Values.externalDatabase.sslMode -}}
{{- if .Values.externalDatabase.caSecret.name -}}
{{- $_ := set $tls "PGSSLROOTCERT" (printf "%s/ca.crt" (include "datasurface.database.caFolder" .)) -}}
{{- end -}}
{{- end -}}
{{- toJson $tls -}}
{{- end -}}

{{- define "datasurface.database.tlsEnv" -}}
{{- range $name, $value := include "datasurface.database.tls" . | fromJson }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{- define "datasurface.database.caMount" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.caSecret.name }}
- name: db-ca
  mountPath: {{ include "datasurface.database.caFolder" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "datasurface.database.caVolume" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.caSecret.name }}
- name: db-ca
  secret:
    secretName: {{ .Values.externalDatabase.caSecret.name }}
    defaultMode: 0444
    items:
      - key: {{ .Values.externalDatabase.caSecret.key }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Database names: fixed for the bundled server (its init script creates them). */}}
{{- define "datasurface.database.source" -}}
{{- ternary "customer_db" .Values.externalDatabase.sourceDatabase .Values.postgresql.enabled -}}
{{- end -}}
{{- define "datasurface.database.merge" -}}
{{- ternary "merge_db" .Values.externalDatabase.mergeDatabase .Values.postgresql.enabled -}}
{{- end -}}
{{- define "datasurface.database.airflow" -}}
{{- ternary "airflow_db" .Values.externalDatabase.airflowDatabase .Values.postgresql.enabled -}}
{{- end -}}

{{/* Credentials ----------------------------------------------------------------------------------- */}}
{{/* Env prefix of a credential name (the job's env naming rule): upper-cased, [^A-Z0-9] -> _ */}}
{{- define "datasurface.credentialPrefix" -}}
{{- regexReplaceAll "[^A-Z0-9]" (upper .) "_" -}}
{{- end -}}

{{/* The secretEnv list (as JSON) of platform.json: X_USER/X_PASSWORD per credential, then the git token. */}}
{{- define "datasurface.secretEnv" -}}
{{- $dbSecret := include "datasurface.database.secretName" . -}}
{{- $entries := list -}}
{{- range $name := keys .Values.credentials | sortAlpha -}}
{{- $cred := get $.Values.credentials $name -}}
{{- $secret := default $dbSecret $cred.secretName -}}
{{- $prefix := include "datasurface.credentialPrefix" $name -}}
{{- $entries = append $entries (dict "name" (printf "%s_USER" $prefix) "secret" $secret "key" $cred.usernameKey) -}}
{{- $entries = append $entries (dict "name" (printf "%s_PASSWORD" $prefix) "secret" $secret "key" $cred.passwordKey) -}}
{{- end -}}
{{- with (include "datasurface.gitTokenSecret" . | fromJson) -}}
{{- /* not optional: a missing Secret fails the pod instead of cloning without the token */ -}}
{{- $entries = append $entries (dict "name" "DATASURFACE_GIT_TOKEN" "secret" .name "key" .key) -}}
{{- end -}}
{{- toJson $entries -}}
{{- end -}}

{{/* secretEnv entries as container env vars (secretKeyRef). */}}
{{- define "datasurface.secretEnvVars" -}}
{{- range (include "datasurface.secretEnv" . | fromJsonArray) }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* The git token Secret reference as JSON ({} when none). */}}
{{- define "datasurface.gitTokenSecret" -}}
{{- if .Values.model.tokenSecret.name -}}
{{- toJson (dict "name" .Values.model.tokenSecret.name "key" .Values.model.tokenSecret.key) -}}
{{- else if .Values.model.token -}}
{{- toJson (dict "name" (include "datasurface.componentName" (dict "ctx" . "suffix" "git")) "key" "token") -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/* The Slack webhook Secret reference as JSON ({} when none). */}}
{{- define "datasurface.slackSecret" -}}
{{- if .Values.slack.webhookSecret.name -}}
{{- toJson (dict "name" .Values.slack.webhookSecret.name "key" .Values.slack.webhookSecret.key) -}}
{{- else if .Values.slack.webhook -}}
{{- toJson (dict "name" (include "datasurface.componentName" (dict "ctx" . "suffix" "slack")) "key" "webhook") -}}
{{- else -}}
{}
{{- end -}}
{{- end -}}

{{/* The model: built-in ConfigMap or a git repository. */}}
{{- define "datasurface.model.configMapName" -}}
{{- include "datasurface.componentName" (dict "ctx" . "suffix" "model") -}}
{{- end -}}

{{/* Where the built-in model's ConfigMap is mounted: platform.json's model.repo, DATASURFACE_MODEL of the
     job-image pods, and the scheduler's mount for the local runner all come from here. */}}
{{- define "datasurface.model.mountPath" -}}
/model
{{- end -}}

{{/* The names (JSON list) of the platforms whose jobs run with the local runner, on the scheduler. */}}
{{- define "datasurface.localRunnerPlatforms" -}}
{{- $names := list -}}
{{- range .Values.platforms -}}
{{- if eq (.runner | default $.Values.platformDefaults.runner) "local" -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* Plain (non-secret) env of job-image pods: the model and the merge database. */}}
{{- define "datasurface.jobEnv" -}}
- name: DATASURFACE_MODEL
  value: {{ default (include "datasurface.model.mountPath" .) .Values.model.repo | quote }}
{{- if and .Values.model.repo .Values.model.ref }}
- name: DATASURFACE_MODEL_REF
  value: {{ .Values.model.ref | quote }}
{{- end }}
- name: DATASURFACE_MODEL_PATH
  value: {{ ternary .Values.model.path "datasurface.yaml" (not (empty .Values.model.repo)) | quote }}
- name: DATASURFACE_MERGE_HOST
  value: {{ include "datasurface.database.host" . | quote }}
- name: DATASURFACE_MERGE_PORT
  value: {{ include "datasurface.database.port" . | quote }}
- name: DATASURFACE_MERGE_DATABASE
  value: {{ include "datasurface.database.merge" . | quote }}
- name: DATASURFACE_MERGE_CREDENTIAL
  value: {{ .Values.merge.credential | quote }}
- name: TMPDIR
  value: /tmp
{{- include "datasurface.database.tlsEnv" . }}
{{- end -}}

{{/* Airflow --------------------------------------------------------------------------------------- */}}
{{- define "datasurface.airflow.fullname" -}}
{{- include "datasurface.componentName" (dict "ctx" . "suffix" "airflow") -}}
{{- end -}}

{{/* An Airflow component's name: (dict "ctx" $ "component" "scheduler"). */}}
{{- define "datasurface.airflow.name" -}}
{{- include "datasurface.componentName" (dict "ctx" .ctx "suffix" (printf "airflow-%s" .component)) -}}
{{- end -}}

{{- define "datasurface.airflow.serviceAccountName" -}}
{{- if .Values.airflow.serviceAccount.create -}}
{{- default (include "datasurface.airflow.fullname" .) .Values.airflow.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.airflow.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "datasurface.airflow.secretName" -}}
{{- default (include "datasurface.airflow.fullname" .) .Values.airflow.existingSecret -}}
{{- end -}}

{{/* Platforms ------------------------------------------------------------------------------------- */}}
{{/* Kubernetes names: the platform name in lower case with _ as - (label values and folders keep _). */}}
{{- define "datasurface.platform.configMapName" -}}
{{- include "datasurface.componentName" (dict "ctx" .ctx "suffix" (printf "dags-%s" (lower .platform.name | replace "_" "-"))) -}}
{{- end -}}

{{/* A stable secret value: the existing Secret's value (lookup), else a fresh random one. Call with
     (dict "ctx" $ "secret" NAME "key" KEY "length" N) for N random letters and digits (URL-safe, so a
     password fits a database URL), or (dict ... "fernet" true) for a Fernet key: 32 random bytes,
     url-safe base64. Returns the Secret's base64 data. Under `helm template` (and Argo CD, Flux) lookup
     finds nothing: set the existingSecret values instead (README "GitOps install"). */}}
{{- define "datasurface.stableSecret" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else if .fernet -}}
{{- randBytes 32 | replace "+" "-" | replace "/" "_" | b64enc -}}
{{- else -}}
{{- randAlphaNum (int .length) | b64enc -}}
{{- end -}}
{{- end -}}
