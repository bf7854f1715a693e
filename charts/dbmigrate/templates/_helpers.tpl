{{/*
The scope every named template below works on.

The templates an application chart includes ("dbmigrate.waitInitContainer", "dbmigrate.waitVolumes")
take either the root context (`$`) or a dict:
  context  the root context ($); required in the dict form
  values   dbmigrate's values; default: .Values.dbmigrate of the context when it has that key, else .Values
  name     the chart name used in resource names; default "dbmigrate" (set it when the dependency has an alias)
  image    a full image reference (repository:tag) that replaces dbmigrate's image values

"dbmigrate.scope" fills the dict it is given, {"in": <that argument>}, with root, values, name and image.
*/}}
{{- define "dbmigrate.scope" -}}
{{- $in := .in -}}
{{- $root := $in -}}
{{- $values := dict -}}
{{- $name := "" -}}
{{- $image := "" -}}
{{- if hasKey $in "context" -}}
{{- $root = $in.context -}}
{{- $values = $in.values | default dict -}}
{{- $name = $in.name | default "" -}}
{{- $image = $in.image | default "" -}}
{{- end -}}
{{- if not $values -}}
{{- if hasKey $root.Values "dbmigrate" -}}
{{- $values = $root.Values.dbmigrate -}}
{{- else -}}
{{- $values = $root.Values -}}
{{- $name = $name | default $root.Chart.Name -}}
{{- end -}}
{{- end -}}
{{- $name = $name | default "dbmigrate" -}}
{{- $_ := set . "root" $root -}}
{{- $_ := set . "values" $values -}}
{{- $_ := set . "name" $name -}}
{{- $_ := set . "image" $image -}}
{{- end -}}

{{/*
The chart name (nameOverride wins). Takes a scope.
*/}}
{{- define "dbmigrate.name" -}}
{{- default .name .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fully qualified name every resource name starts with: <release>-<name>, or the release name when
it already contains the chart name; fullnameOverride wins. Takes a scope.
*/}}
{{- define "dbmigrate.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .name .values.nameOverride -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A resource name: the full name (shortened so the result fits 63 characters) and a suffix.
Takes (list <scope> <suffix>).
*/}}
{{- define "dbmigrate.resourceName" -}}
{{- $scope := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $base := include "dbmigrate.fullname" $scope | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $suffix -}}
{{- end -}}

{{/*
The Secret the chart creates for database.source=secret. Takes a scope.
*/}}
{{- define "dbmigrate.secretName" -}}
{{- include "dbmigrate.resourceName" (list . "database") -}}
{{- end -}}

{{/*
Chart name and version for the helm.sh/chart label. Takes a scope.
*/}}
{{- define "dbmigrate.chart" -}}
{{- printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels; a scope with a "component" key adds app.kubernetes.io/component.
*/}}
{{- define "dbmigrate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dbmigrate.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
Labels of every resource. Takes a scope.
*/}}
{{- define "dbmigrate.labels" -}}
helm.sh/chart: {{ include "dbmigrate.chart" . }}
{{ include "dbmigrate.selectorLabels" . }}
{{- with .root.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Helm's global values of a scope (an empty dict when there are none).
*/}}
{{- define "dbmigrate.global" -}}
{{- toJson (.root.Values.global | default dict) -}}
{{- end -}}

{{/*
The image values in effect, as JSON: image, or global.image when image.repository is empty (an
application chart that declares its image once, for its Deployment and for dbmigrate). Takes a scope.
*/}}
{{- define "dbmigrate.imageValues" -}}
{{- $image := .values.image | default dict -}}
{{- if not $image.repository -}}
{{- $global := include "dbmigrate.global" . | fromJson -}}
{{- $image = $global.image | default dict -}}
{{- end -}}
{{- toJson $image -}}
{{- end -}}

{{/*
The image reference: [global.imageRegistry/]repository[:tag][@digest]; a scope with an image (the
application pod's own image reference) uses that. Takes a scope.
*/}}
{{- define "dbmigrate.image" -}}
{{- if .image -}}
{{- .image -}}
{{- else -}}
{{- $image := include "dbmigrate.imageValues" . | fromJson -}}
{{- $global := include "dbmigrate.global" . | fromJson -}}
{{- with $global.imageRegistry }}{{ trimSuffix "/" . }}/{{ end -}}
{{- $image.repository -}}
{{- with $image.tag }}:{{ . }}{{ end -}}
{{- with $image.digest }}@{{ . }}{{ end -}}
{{- end -}}
{{- end -}}

{{/*
The application version recorded in history: settings.appVersion, else the image tag. Takes a scope.
*/}}
{{- define "dbmigrate.appVersion" -}}
{{- if .values.settings.appVersion -}}
{{- .values.settings.appVersion | toString -}}
{{- else -}}
{{- $ref := include "dbmigrate.image" . | splitList "@" | first -}}
{{- $parts := splitList "/" $ref -}}
{{- $last := last $parts -}}
{{- if contains ":" $last -}}
{{- splitList ":" $last | last -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Fails the render when the database values cannot work, with a message that says what to set. Takes
a scope; its databaseValues names the values' database block in messages (default "database").
*/}}
{{- define "dbmigrate.validateDatabase" -}}
{{- $db := .values.database -}}
{{- $at := .databaseValues | default "database" -}}
{{- if and .fleet (eq $db.source "existingSecret") (not $db.existingSecret.name) -}}
{{- /* the fleet Job: every target's URL comes from the fleet file, none is needed here */ -}}
{{- else if eq $db.source "existingSecret" -}}
{{- if not $db.existingSecret.name -}}
{{- if eq $at "database" -}}
{{- fail "no database configured: set database.existingSecret.name to the Secret that holds the database URL (key database.existingSecret.key, DATABASE_URL), or choose database.source secret, urlFile or passwordFile" -}}
{{- end -}}
{{- fail (printf "%s.source=existingSecret needs %s.existingSecret.name: the Secret that holds the application's database URL" $at $at) -}}
{{- end -}}
{{- if not $db.existingSecret.key -}}
{{- fail (printf "%s.source=existingSecret needs %s.existingSecret.key: the key of the URL in the Secret" $at $at) -}}
{{- end -}}
{{- else if and (eq $db.source "secret") (eq $at "database") -}}
{{- if not $db.secret.url -}}
{{- fail "database.source=secret needs database.secret.url (give it with --set-file or from a CI secret)" -}}
{{- end -}}
{{- else if eq $db.source "urlFile" -}}
{{- if not (and $db.urlFile.secretName $db.urlFile.key $db.urlFile.mountPath) -}}
{{- fail (printf "%s.source=urlFile needs %s.urlFile.secretName, .key and .mountPath" $at $at) -}}
{{- end -}}
{{- else if eq $db.source "passwordFile" -}}
{{- if not (and $db.passwordFile.url $db.passwordFile.secretName $db.passwordFile.key $db.passwordFile.mountPath) -}}
{{- fail (printf "%s.source=passwordFile needs %s.passwordFile.url, .secretName, .key and .mountPath" $at $at) -}}
{{- end -}}
{{- if include "dbmigrate.hasPassword" $db.passwordFile.url -}}
{{- fail (printf "%s.passwordFile.url must not contain a password: the password comes from the Secret %s.passwordFile.secretName" $at $at) -}}
{{- end -}}
{{- else if eq $at "database" -}}
{{- fail (printf "database.source must be existingSecret, secret, urlFile or passwordFile, not %q" (toString $db.source)) -}}
{{- else -}}
{{- fail (printf "%s.source must be empty (the migration's database), existingSecret, urlFile or passwordFile, not %q" $at (toString $db.source)) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when a string holds a database URL with a password, as SQLAlchemy's URL parser reads it
(sqlalchemy.engine.url._parse_url): after "<scheme>://", the user name runs to the first ":" or "/",
and the password from that ":" to the next "@", so postgresql://app:pa/ss@db/shop has the password
"pa/ss". A password query parameter (?password=...) counts too. In a longer text a URL ends at white
space. Takes the string.
*/}}
{{- define "dbmigrate.hasPassword" -}}
{{- $text := toString . -}}
{{- if or (regexMatch `[\w+]+://[^:/\s]*:[^@\s]+@` $text) (regexMatch `[\w+]+://\S*[?&]password=[^&\s]` $text) -}}
true
{{- end -}}
{{- end -}}

{{/*
Fails the render when a value holds a password where only a Secret may: extraEnv, annotations,
command and arguments, the Pushgateway URL. The message names the value, never the password.
Takes a scope.
*/}}
{{- define "dbmigrate.validateNoPasswords" -}}
{{- $values := .values -}}
{{- range $i, $var := $values.extraEnv | default list -}}
{{- $where := printf "extraEnv[%d] (%s)" $i (toString $var.name) -}}
{{- if hasKey $var "value" -}}
{{- if has $var.name (list "DATABASE_URL" "DBMIGRATE_DATABASE_URL") -}}
{{- fail (printf "%s: the database URL never is a plain value; use valueFrom.secretKeyRef, or database.source" $where) -}}
{{- end -}}
{{- if and (regexMatch `(?i)(passw(or)?d|(^|_)pwd$)` (toString $var.name)) (ne (toString $var.value) "") -}}
{{- fail (printf "%s: a password never is a plain value; use valueFrom.secretKeyRef" $where) -}}
{{- end -}}
{{- if include "dbmigrate.hasPassword" $var.value -}}
{{- fail (printf "%s: the value holds a URL with a password; take it from a Secret with valueFrom.secretKeyRef, or use database.source" $where) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $maps := dict "podAnnotations" $values.podAnnotations "migration.annotations" $values.migration.annotations "rollback.annotations" $values.rollback.annotations "database.secret.annotations" $values.database.secret.annotations "serviceAccount.annotations" $values.serviceAccount.annotations -}}
{{- range $name, $map := $maps -}}
{{- range $key, $value := $map | default dict -}}
{{- if include "dbmigrate.hasPassword" $value -}}
{{- fail (printf "%s[%s] holds a URL with a password: annotations are readable by anyone who can list the resource" $name $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $lists := dict "command" $values.command "migration.args" $values.migration.args "rollback.extraArgs" $values.rollback.extraArgs "test.args" $values.test.args "wait.args" $values.wait.args -}}
{{- range $name, $list := $lists -}}
{{- range $i, $arg := $list | default list -}}
{{- if include "dbmigrate.hasPassword" $arg -}}
{{- fail (printf "%s[%d] holds a URL with a password: arguments are visible to anyone who can read the pod; use database.source" $name $i) -}}
{{- end -}}
{{- if hasPrefix "--database-url" (toString $arg) -}}
{{- fail (printf "%s[%d]: the database URL never is an argument; use database.source" $name $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if include "dbmigrate.hasPassword" $values.metrics.pushgateway.url -}}
{{- fail "metrics.pushgateway.url holds a password: it is a plain environment value" -}}
{{- end -}}
{{- end -}}

{{/*
Fails the render unless a value is a Kubernetes quantity (64Mi, 1Gi, 500m, 0.5). Takes (list <name> <value>).
*/}}
{{- define "dbmigrate.validateQuantity" -}}
{{- $name := index . 0 -}}
{{- $value := index . 1 | toString -}}
{{- if not (regexMatch `^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$` $value) -}}
{{- fail (printf "%s is %q, not a Kubernetes quantity (e.g. 64Mi, 1Gi, 500m)" $name $value) -}}
{{- end -}}
{{- end -}}

{{/*
The seconds a setting stands for: its value, or dbmigrate's default when it is empty. Takes
(list <settings> <key>).
*/}}
{{- define "dbmigrate.settingSeconds" -}}
{{- $defaults := dict "waitTimeout" 60 "lockWaitTimeout" 300 "statementTimeout" 3600 "lockConflictWait" 60 -}}
{{- $value := get (index . 0) (index . 1) -}}
{{- if or (kindIs "invalid" $value) (eq (toString $value) "") -}}
{{- get $defaults (index . 1) -}}
{{- else -}}
{{- toString $value -}}
{{- end -}}
{{- end -}}

{{/*
The seconds dbmigrate may run in a Job (DBMIGRATE_DEADLINE): its activeDeadlineSeconds minus its
deadlineMargin, so that dbmigrate stops on its own (exit 3, a history row, a termination message)
before Kubernetes kills the pod (DeadlineExceeded) and its logs with it; empty without a deadline.
Takes the Job's values.
*/}}
{{- define "dbmigrate.deadline" -}}
{{- if ne (toString .activeDeadlineSeconds) "" -}}
{{- sub (int .activeDeadlineSeconds) (int .deadlineMargin) -}}
{{- end -}}
{{- end -}}

{{/*
Fails the render when one of dbmigrate's waits does not fit inside a hook Job's deadline
(activeDeadlineSeconds minus deadlineMargin): dbmigrate would stop at the deadline, in the middle of
a wait that was meant to take longer. Takes (list <settings> <job name> <job values>).
*/}}
{{- define "dbmigrate.validateDeadline" -}}
{{- $settings := index . 0 -}}
{{- $job := index . 1 -}}
{{- $values := index . 2 -}}
{{- $deadlineName := printf "%s.activeDeadlineSeconds" $job -}}
{{- $deadline := $values.activeDeadlineSeconds | toString -}}
{{- if and (kindIs "string" $values.activeDeadlineSeconds) (ne $deadline "") -}}
{{- fail (printf "%s must be whole seconds (e.g. 1700) or empty, not %q" $deadlineName $deadline) -}}
{{- end -}}
{{- if ne $deadline "" -}}
{{- $margin := int $values.deadlineMargin -}}
{{- $limit := include "dbmigrate.deadline" $values -}}
{{- if le (int $limit) 0 -}}
{{- fail (printf "%s.deadlineMargin (%d) leaves no time in %s (%s): dbmigrate stops that many seconds before the deadline; lower %s.deadlineMargin or raise %s" $job $margin $deadlineName $deadline $job $deadlineName) -}}
{{- end -}}
{{- $within := printf "%s (%s) minus %s.deadlineMargin (%d), %s s" $deadlineName $deadline $job $margin $limit -}}
{{- $deadlineSeconds := float64 $limit -}}
{{- range $key := list "waitTimeout" "lockWaitTimeout" "statementTimeout" "lockConflictWait" -}}
{{- $seconds := include "dbmigrate.settingSeconds" (list $settings $key) -}}
{{- $shown := $seconds -}}
{{- if eq (toString (get $settings $key)) "" -}}
{{- $shown = printf "empty: dbmigrate's default %s" $seconds -}}
{{- end -}}
{{- if and (eq $key "statementTimeout") (eq (float64 $seconds) 0.0) -}}
{{- fail (printf "settings.statementTimeout (0: no limit) does not fit in %s: a statement would run until Kubernetes kills the pod; set it below %s" $within $limit) -}}
{{- end -}}
{{- if ge (float64 $seconds) $deadlineSeconds -}}
{{- fail (printf "settings.%s (%s) does not fit in %s: dbmigrate would stop at its deadline before that wait is over; lower settings.%s or raise %s (and helm --timeout)" $key $shown $within $key $deadlineName) -}}
{{- end -}}
{{- end -}}
{{- $wait := include "dbmigrate.settingSeconds" (list $settings "waitTimeout") -}}
{{- $lockWait := include "dbmigrate.settingSeconds" (list $settings "lockWaitTimeout") -}}
{{- if ge (addf $wait $lockWait) $deadlineSeconds -}}
{{- fail (printf "settings.waitTimeout + settings.lockWaitTimeout (%s + %s) do not fit in %s: both waits come before the first step; lower them or raise %s" $wait $lockWait $within $deadlineName) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Every check of the values that the schema cannot say clearly (or that --skip-schema-validation
skips): the image, the database source, passwords, quantities, waits that fit the deadlines, and
Helm 4's TTL limit. Takes a scope.
*/}}
{{- define "dbmigrate.validate" -}}
{{- $values := .values -}}
{{- if and $values.rollback.enabled ($values.fleet | default dict).enabled -}}
{{- fail "rollback.enabled rolls back one database: it cannot be used with fleet.enabled" -}}
{{- end -}}
{{- if not .image -}}
{{- $image := include "dbmigrate.imageValues" . | fromJson -}}
{{- $from := ternary "image" "global.image" (not (empty .values.image.repository)) -}}
{{- if not $image.repository -}}
{{- fail "image.repository is not set: dbmigrate runs your application's image (dbmigrate installed, alembic.ini and your revisions in workingDir); set image.repository and image.tag (or global.image in an application chart)" -}}
{{- end -}}
{{- range $key := list "tag" "digest" -}}
{{- $value := get $image $key -}}
{{- if not (or (kindIs "invalid" $value) (kindIs "string" $value)) -}}
{{- fail (printf "%s.%s must be a string, not the number %v: quote it (%s: \"1.10\"), YAML reads 1.10 as the number 1.1" $from $key $value $key) -}}
{{- end -}}
{{- end -}}
{{- if not (or $image.tag $image.digest) -}}
{{- fail (printf "%s.tag is not set for %s: set the tag (or %s.digest) of your application's image; dbmigrate's own version is not a tag of it" $from $image.repository $from) -}}
{{- end -}}
{{- end -}}
{{- include "dbmigrate.validateDatabase" . -}}
{{- include "dbmigrate.validateNoPasswords" . -}}
{{- with $values.tmpSizeLimit -}}
{{- include "dbmigrate.validateQuantity" (list "tmpSizeLimit" .) -}}
{{- end -}}
{{- $resources := dict "resources" $values.resources "migration.resources" $values.migration.resources "rollback.resources" $values.rollback.resources "wait.resources" $values.wait.resources -}}
{{- range $name, $spec := $resources -}}
{{- range $kind := list "requests" "limits" -}}
{{- range $resource, $quantity := get ($spec | default dict) $kind | default dict -}}
{{- include "dbmigrate.validateQuantity" (list (printf "%s.%s.%s" $name $kind $resource) $quantity) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $values.migration.enabled -}}
{{- include "dbmigrate.validateDeadline" (list $values.settings "migration" $values.migration) -}}
{{- end -}}
{{- if and $values.rollback.enabled (not $values.migration.hook.enabled) -}}
{{- fail "rollback.enabled needs Helm hooks: the rollback Job is a pre-rollback hook, and migration.hook.enabled=false renders without hooks" -}}
{{- end -}}
{{- if $values.rollback.enabled -}}
{{- include "dbmigrate.validateDeadline" (list $values.settings "rollback" $values.rollback) -}}
{{- end -}}
{{- if hasPrefix "v4." .root.Capabilities.HelmVersion.Version -}}
{{- range $job := list "migration" "rollback" -}}
{{- $values := get $.values $job -}}
{{- $hooked := or (eq $job "rollback") $.values.migration.hook.enabled -}}
{{- if and $values.enabled $hooked (ne (toString $values.ttlSecondsAfterFinished) "") -}}
{{- fail (printf "%s.ttlSecondsAfterFinished cannot be used with Helm 4 (%s): Helm 4 waits for a hook Job that the TTL controller may already have deleted, and fails a successful release (helm/helm#31786); leave it empty and use %s.hook.deletePolicy (before-hook-creation,hook-succeeded) instead" $job $.root.Capabilities.HelmVersion.Version $job) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The path of the mounted database Secret file (urlFile and passwordFile). Takes a scope.
*/}}
{{- define "dbmigrate.databaseFile" -}}
{{- $file := get .values.database .values.database.source -}}
{{- printf "%s/%s" (trimSuffix "/" $file.mountPath) $file.key -}}
{{- end -}}

{{/*
The environment of every container: the runner identity, dbmigrate's settings, the database URL
(from a Secret, never a plain value) and extraEnv. A scope with archiveKey (the hook Jobs) also gets
the archive's signing key, one with a job its deadline, one with deferBackfills (the migration Job)
DBMIGRATE_DEFER_BACKFILLS, one with whenAhead (the migration Job) what an upgrade does with a
database ahead of the image. Takes a scope.
*/}}
{{- define "dbmigrate.env" -}}
{{- include "dbmigrate.validate" . -}}
{{- $db := .values.database -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if and (eq $db.source "existingSecret") $db.existingSecret.name }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ tpl $db.existingSecret.name .root | quote }}
      key: {{ $db.existingSecret.key | quote }}
{{- else if eq $db.source "secret" }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "dbmigrate.secretName" . | quote }}
      key: DATABASE_URL
{{- else if eq $db.source "urlFile" }}
- name: DBMIGRATE_DATABASE_URL_FILE
  value: {{ include "dbmigrate.databaseFile" . | quote }}
{{- else if eq $db.source "passwordFile" }}
- name: DBMIGRATE_DATABASE_URL
  value: {{ $db.passwordFile.url | quote }}
- name: DBMIGRATE_DATABASE_PASSWORD_FILE
  value: {{ include "dbmigrate.databaseFile" . | quote }}
{{- end }}
{{- if .archiveKey }}
{{- include "dbmigrate.archiveKeyEnv" . }}
{{- end }}
{{- with .values.config }}
- name: DBMIGRATE_CONFIG
  value: {{ . | quote }}
{{- end }}
{{- with include "dbmigrate.appVersion" . }}
- name: DBMIGRATE_APP_VERSION
  value: {{ . | quote }}
{{- end }}
{{- $settings := .values.settings }}
{{- $names := dict
  "logFormat" "DBMIGRATE_LOG_FORMAT"
  "waitTimeout" "DBMIGRATE_WAIT_TIMEOUT"
  "lockWaitTimeout" "DBMIGRATE_LOCK_WAIT_TIMEOUT"
  "lockTimeout" "DBMIGRATE_LOCK_TIMEOUT"
  "statementTimeout" "DBMIGRATE_STATEMENT_TIMEOUT"
  "lockConflictWait" "DBMIGRATE_LOCK_CONFLICT_WAIT"
  "maxLockRetries" "DBMIGRATE_MAX_LOCK_RETRIES"
  "historyTable" "DBMIGRATE_HISTORY_TABLE"
  "tableSchema" "DBMIGRATE_TABLE_SCHEMA"
}}
{{- if .deferBackfills }}
- name: DBMIGRATE_DEFER_BACKFILLS
  value: "true"
{{- end }}
{{- range $key, $envName := $names }}
{{- $value := get $settings $key }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") }}
- name: {{ $envName }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- with .job }}
{{- with include "dbmigrate.deadline" . }}
- name: DBMIGRATE_DEADLINE
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .whenAhead }}
- name: DBMIGRATE_WHEN_AHEAD
  value: {{ . | quote }}
{{- end }}
{{- with .metrics }}
{{- include "dbmigrate.metricsEnv" $ }}
{{- end }}
{{- with .values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
DBMIGRATE_ARCHIVE_KEY from archive.keySecret, when set: the HMAC key the upgrade signs archive
entries with and the rollback verifies them with. Only the hook Jobs get it. Takes a scope.
*/}}
{{- define "dbmigrate.archiveKeyEnv" -}}
{{- $archive := .values.archive | default dict -}}
{{- $keySecret := $archive.keySecret | default dict -}}
{{- with $keySecret.name }}
{{- if not $keySecret.key }}
{{- fail "archive.keySecret.name needs archive.keySecret.key" }}
{{- end }}
- name: DBMIGRATE_ARCHIVE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ tpl . $.root | quote }}
      key: {{ $keySecret.key | quote }}
{{- end }}
{{- end -}}

{{/*
The migration Job's metrics environment (DBMIGRATE_PUSHGATEWAY, DBMIGRATE_METRICS_GROUPING,
DBMIGRATE_METRICS_TEXTFILE). Takes a scope.
*/}}
{{- define "dbmigrate.metricsEnv" -}}
{{- $metrics := .values.metrics -}}
{{- with $metrics.pushgateway.url }}
- name: DBMIGRATE_PUSHGATEWAY
  value: {{ . | quote }}
- name: DBMIGRATE_METRICS_GROUPING
  value: {{ $metrics.pushgateway.grouping | default (printf "release=%s,namespace=%s" $.root.Release.Name $.root.Release.Namespace) | quote }}
{{- end }}
{{- with $metrics.textfile.path }}
- name: DBMIGRATE_METRICS_TEXTFILE
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
Volume mounts of every container: /tmp (the root filesystem is read-only), the database Secret file,
the metrics directory (the Job only) and extraVolumeMounts. Takes a scope.
*/}}
{{- define "dbmigrate.volumeMounts" -}}
- name: dbmigrate-tmp
  mountPath: /tmp
{{- if has .values.database.source (list "urlFile" "passwordFile") }}
- name: dbmigrate-database
  mountPath: {{ (get .values.database .values.database.source).mountPath | quote }}
  readOnly: true
{{- end }}
{{- if .fleet }}
- name: dbmigrate-fleet
  mountPath: /etc/dbmigrate
  readOnly: true
{{- end }}
{{- if and .metrics .values.metrics.textfile.path }}
- name: dbmigrate-metrics
  mountPath: {{ dir .values.metrics.textfile.path | quote }}
{{- end }}
{{- with .values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The volumes those mounts need. Secret files are mode 0444 so the non-root user reads them whatever
the pod's fsGroup; only containers that mount the volume see them. Takes a scope.
*/}}
{{- define "dbmigrate.volumes" -}}
- name: dbmigrate-tmp
  emptyDir:
    {{- with .values.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
{{- if has .values.database.source (list "urlFile" "passwordFile") }}
{{- $file := get .values.database .values.database.source }}
- name: dbmigrate-database
  secret:
    secretName: {{ tpl $file.secretName .root | quote }}
    defaultMode: 292
    items:
      - key: {{ $file.key | quote }}
        path: {{ $file.key | quote }}
{{- end }}
{{- if .fleet }}
- name: dbmigrate-fleet
  configMap:
    name: {{ include "dbmigrate.fleetConfigMapName" . | quote }}
    items:
      - key: {{ include "dbmigrate.fleetConfigMapKey" . | quote }}
        path: fleet.toml
{{- end }}
{{- if and .metrics .values.metrics.textfile.path }}
- name: dbmigrate-metrics
  {{- toYaml .values.metrics.textfile.volume | nindent 2 }}
{{- end }}
{{- with .values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
One container running `command` + .args. Takes a scope with containerName, args, resources and
metrics (whether the metrics environment and volume belong to it).
*/}}
{{- define "dbmigrate.container" -}}
- name: {{ .containerName }}
  image: {{ include "dbmigrate.image" . | quote }}
  imagePullPolicy: {{ .values.image.pullPolicy }}
  {{- with .values.command }}
  command:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .values.workingDir }}
  workingDir: {{ . | quote }}
  {{- end }}
  env:
    {{- include "dbmigrate.env" . | nindent 4 }}
  {{- with .values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "dbmigrate.volumeMounts" . | nindent 4 }}
  {{- with .values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{/*
The pods' pull secrets, as a JSON list: global.imagePullSecrets (names or {name}) then
imagePullSecrets, without repeats. Takes a scope.
*/}}
{{- define "dbmigrate.imagePullSecrets" -}}
{{- $global := include "dbmigrate.global" . | fromJson -}}
{{- $secrets := list -}}
{{- range concat ($global.imagePullSecrets | default list) (.values.imagePullSecrets | default list) -}}
{{- $secret := . -}}
{{- if kindIs "string" . -}}
{{- $secret = dict "name" . -}}
{{- end -}}
{{- $secrets = append $secrets $secret -}}
{{- end -}}
{{- $secrets | uniq | toJson -}}
{{- end -}}

{{/*
The pods' service account: serviceAccount.name (tpl), or <fullname> when the chart creates it;
empty means the namespace's default. Takes a scope.
*/}}
{{- define "dbmigrate.serviceAccountName" -}}
{{- $account := .values.serviceAccount -}}
{{- $name := tpl ($account.name | default "") .root -}}
{{- if $account.create -}}
{{- $name | default (include "dbmigrate.fullname" .) -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/*
Metadata annotations of the resources the hook Jobs need before they start (the chart-created
Secret, the ServiceAccount, the NetworkPolicy): hooks of the Jobs' events one weight below them,
replaced by the next run and never deleted after it, by Helm or by Argo CD (pods of the application
still read the Secret), whatever the Jobs' own delete policies say. Without hooks
(migration.hook.enabled=false) they are plain resources, an Argo CD sync wave before the Job. Takes
a scope.
*/}}
{{- define "dbmigrate.prerequisiteAnnotations" -}}
{{- $weight := include "dbmigrate.secretWeight" . -}}
{{- $hooked := .values.migration.hook.enabled -}}
{{- $events := .values.migration.hook.events -}}
{{- if .values.rollback.enabled -}}
{{- $events = append $events "pre-rollback" | uniq -}}
{{- end -}}
{{- if $hooked }}
helm.sh/hook: {{ join "," $events | quote }}
helm.sh/hook-weight: {{ $weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- if .values.argocd.enabled }}
{{- if $hooked }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/hook-delete-policy: BeforeHookCreation
{{- end }}
argocd.argoproj.io/sync-wave: {{ $weight | quote }}
{{- end }}
{{- end -}}

{{/*
Pod spec fields shared by the Job's pod and the test pod (everything but containers and
restartPolicy). Takes a scope.
*/}}
{{- define "dbmigrate.podSpec" -}}
{{- with include "dbmigrate.imagePullSecrets" . | fromJsonArray }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with include "dbmigrate.serviceAccountName" . }}
serviceAccountName: {{ . | quote }}
{{- end }}
automountServiceAccountToken: {{ .values.automountServiceAccountToken }}
enableServiceLinks: false
{{- with .values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "dbmigrate.volumes" . | nindent 2 }}
{{- end -}}

{{/*
A Job running one container (the migration Job, the rollback Job). Takes a scope with:
  job            the Job's values (hook.weight, hook.deletePolicy, backoffLimit, podFailurePolicy,
                 activeDeadlineSeconds, ttlSecondsAfterFinished, annotations, resources)
  suffix         the resource name suffix
  hooked         whether it is a Helm hook (see "dbmigrate.jobName" for a Job that is not)
  events         the Helm hook events
  argocd         whether to add the Argo CD hook annotations (when argocd.enabled)
  containerName  and args: the container (see "dbmigrate.container")
  indexed        optional: an Indexed Job's completions, parallelism and backoffLimitPerIndex (with
                 backoffLimitPerIndex, podFailurePolicy fails the index instead of the Job)
*/}}
{{- define "dbmigrate.hookJob" -}}
{{- $job := .job -}}
{{- $_ := set . "resources" ($job.resources | default .values.resources) -}}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "dbmigrate.jobName" . }}
  namespace: {{ .root.Release.Namespace | quote }}
  labels:
    {{- include "dbmigrate.labels" . | nindent 4 }}
  {{- with include "dbmigrate.jobAnnotations" . }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  {{- include "dbmigrate.jobSpec" . | nindent 2 }}
{{- end -}}

{{/*
A Job's spec (the hook Jobs', the fleet's Indexed Job, the backfill CronJob's jobTemplate): completions
and parallelism from .indexed, backoffLimit (or backoffLimitPerIndex), activeDeadlineSeconds,
ttlSecondsAfterFinished, podFailurePolicy from .job, and the pod template. Takes the scope of
"dbmigrate.hookJob" with resources set.
*/}}
{{- define "dbmigrate.jobSpec" -}}
{{- $job := .job -}}
{{- /* indexed (the fleet Job): completions, parallelism, backoffLimitPerIndex; see "dbmigrate.fleetScope" */ -}}
{{- $perIndex := "" -}}
{{- with .indexed -}}
{{- if not (kindIs "invalid" .backoffLimitPerIndex) -}}
{{- $perIndex = toString .backoffLimitPerIndex -}}
{{- end -}}
{{- end -}}
{{- with .indexed }}
completionMode: Indexed
completions: {{ .completions }}
parallelism: {{ .parallelism }}
{{- if ne $perIndex "" }}
backoffLimitPerIndex: {{ $perIndex }}
{{- end }}
{{- end }}
{{- if eq $perIndex "" }}
backoffLimit: {{ $job.backoffLimit }}
{{- end }}
{{- with $job.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ . }}
{{- end }}
{{- if and (hasKey $job "ttlSecondsAfterFinished") (ne (toString $job.ttlSecondsAfterFinished) "") }}
ttlSecondsAfterFinished: {{ $job.ttlSecondsAfterFinished }}
{{- end }}
{{- if and $job.podFailurePolicy.enabled $job.podFailurePolicy.failJobOnExitCodes }}
podFailurePolicy:
  rules:
    - action: {{ ternary "FailJob" "FailIndex" (eq $perIndex "") }}
      onExitCodes:
        containerName: {{ .containerName }}
        operator: In
        values:
          {{- toYaml $job.podFailurePolicy.failJobOnExitCodes | nindent 10 }}
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
{{- end }}
template:
  {{- include "dbmigrate.jobPodTemplate" . | nindent 2 }}
{{- end -}}

{{/*
The pod template of a Job. Takes the scope of "dbmigrate.hookJob".
*/}}
{{- define "dbmigrate.jobPodTemplate" -}}
metadata:
  {{- include "dbmigrate.podMetadata" . | nindent 2 }}
spec:
  restartPolicy: Never
  {{- include "dbmigrate.podSpec" . | trim | nindent 2 }}
  containers:
    {{- include "dbmigrate.container" . | nindent 4 }}
{{- end -}}

{{/*
A Job's name. A hook's is fixed, <fullname>-<suffix>: Helm deletes the previous Job before it creates
the next. A Job that is not a hook (rendered manifests, applied by kubectl, kustomize or Argo CD)
ends with the first 10 hex digits of the sha256 of its pod template, which is immutable: whatever
changes what it runs (image, command, args, environment) makes a new Job, and an unchanged render
applies as a no-op. Takes the scope of "dbmigrate.hookJob".
*/}}
{{- define "dbmigrate.jobName" -}}
{{- if .hooked -}}
{{- include "dbmigrate.resourceName" (list . .suffix) -}}
{{- else -}}
{{- $scope := merge (dict "resources" (.job.resources | default .values.resources)) . -}}
{{- $hash := include "dbmigrate.jobPodTemplate" $scope | sha256sum | trunc 10 -}}
{{- include "dbmigrate.resourceName" (list . (printf "%s-%s" .suffix $hash)) -}}
{{- end -}}
{{- end -}}

{{/*
A Job's annotations: the Helm (and Argo CD) hook annotations when it is a hook, Argo CD's sync wave
when it is not, and the Job's own annotations. Takes the scope of "dbmigrate.hookJob".
*/}}
{{- define "dbmigrate.jobAnnotations" -}}
{{- $job := .job -}}
{{- if .hooked }}
helm.sh/hook: {{ join "," .events | quote }}
helm.sh/hook-weight: {{ $job.hook.weight | toString | quote }}
helm.sh/hook-delete-policy: {{ $job.hook.deletePolicy | quote }}
{{- end }}
{{- if and .argocd .values.argocd.enabled }}
{{- if .hooked }}
argocd.argoproj.io/hook: PreSync
argocd.argoproj.io/hook-delete-policy: {{ .values.argocd.hookDeletePolicy | quote }}
{{- end }}
argocd.argoproj.io/sync-wave: {{ $job.hook.weight | toString | quote }}
{{- end }}
{{- with $job.annotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
The migration Job's scope: fills a scope made with "dbmigrate.scope" (job.yaml and NOTES.txt).
*/}}
{{- define "dbmigrate.migrationScope" -}}
{{- $migration := .values.migration -}}
{{- $_ := set . "component" "migration" -}}
{{- $_ := set . "metrics" true -}}
{{- $_ := set . "archiveKey" true -}}
{{- $_ := set . "job" $migration -}}
{{- $_ := set . "suffix" "migrate" -}}
{{- $_ := set . "hooked" $migration.hook.enabled -}}
{{- $_ := set . "events" $migration.hook.events -}}
{{- $_ := set . "argocd" true -}}
{{- $_ := set . "containerName" "migrate" -}}
{{- $_ := set . "args" $migration.args -}}
{{- $_ := set . "deferBackfills" $migration.deferBackfills -}}
{{- $_ := set . "whenAhead" $migration.whenAhead -}}
{{- end -}}

{{/*
The backfill CronJob's arguments, as JSON: backfill run [--max-duration <d>] [--window <w>] <extraArgs>.
Takes the backfill.cronJob values.
*/}}
{{- define "dbmigrate.backfillArgs" -}}
{{- $args := list "backfill" "run" -}}
{{- with .maxDuration -}}
{{- $args = concat $args (list "--max-duration" (toString .)) -}}
{{- end -}}
{{- with .window -}}
{{- $args = concat $args (list "--window" .) -}}
{{- end -}}
{{- concat $args (.extraArgs | default list) | toJson -}}
{{- end -}}

{{/*
The rollback Job's arguments, as JSON: rollback --schema <schema> [--to <to>] <extraArgs>. Takes the
rollback values.
*/}}
{{- define "dbmigrate.rollbackArgs" -}}
{{- $args := list "rollback" "--schema" .schema -}}
{{- with .to -}}
{{- $args = concat $args (list "--to" (toString .)) -}}
{{- end -}}
{{- concat $args (.extraArgs | default list) | toJson -}}
{{- end -}}

{{/*
The weight of the chart-created Secret, ServiceAccount and NetworkPolicy: one below every hook Job
that needs them. Takes a scope.
*/}}
{{- define "dbmigrate.secretWeight" -}}
{{- $weight := int .values.migration.hook.weight -}}
{{- if .values.rollback.enabled -}}
{{- $weight = min $weight (int .values.rollback.hook.weight) -}}
{{- end -}}
{{- sub $weight 1 -}}
{{- end -}}

{{/*
Pod metadata (labels and annotations) for a scope with a component; a podAnnotations key in the
scope adds annotations to the values' podAnnotations.
*/}}
{{- define "dbmigrate.podMetadata" -}}
labels:
  {{- include "dbmigrate.labels" . | nindent 2 }}
  {{- with .values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with merge (dict) (.podAnnotations | default dict) .values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The init container an application chart puts into its Deployment's pod spec, to start the
application only once the schema is ready:

  initContainers:
    {{- include "dbmigrate.waitInitContainer" (dict "context" $ "values" .Values.dbmigrate) | nindent 8 }}
  volumes:
    {{- include "dbmigrate.waitVolumes" (dict "context" $ "values" .Values.dbmigrate) | nindent 8 }}

It runs `dbmigrate wait --timeout <wait.timeout>` with the same image and settings as the migration
Job, and the database source wait.database (the application's credential), or the Job's when that is
not set. Takes the root context or a dict (see "dbmigrate.scope").
*/}}
{{- define "dbmigrate.waitInitContainer" -}}
{{- $scope := dict "in" . -}}
{{- include "dbmigrate.scope" $scope -}}
{{- include "dbmigrate.waitScope" $scope -}}
{{- $wait := $scope.values.wait -}}
{{- $args := $wait.args -}}
{{- if and (not (kindIs "invalid" $wait.timeout)) (ne (toString $wait.timeout) "") -}}
{{- $args = concat $args (list "--timeout" (toString $wait.timeout)) -}}
{{- end -}}
{{- $_ := set $scope "containerName" "dbmigrate-wait" -}}
{{- $_ := set $scope "args" $args -}}
{{- $_ := set $scope "resources" ($wait.resources | default $scope.values.resources) -}}
{{- include "dbmigrate.container" $scope -}}
{{- end -}}

{{/*
The volumes "dbmigrate.waitInitContainer" mounts (all named dbmigrate-*). Takes the same argument.
*/}}
{{- define "dbmigrate.waitVolumes" -}}
{{- $scope := dict "in" . -}}
{{- include "dbmigrate.scope" $scope -}}
{{- include "dbmigrate.waitScope" $scope -}}
{{- include "dbmigrate.volumes" $scope -}}
{{- end -}}

{{/*
The wait init container's scope: fills a scope made with "dbmigrate.scope". When wait.database.source
is set, its values' database is wait.database (the application's credential, which only needs to
read), and validation messages name wait.database; otherwise the migration Job's database stays.
*/}}
{{- define "dbmigrate.waitScope" -}}
{{- $own := (.values.wait | default dict).database | default dict -}}
{{- if $own.source -}}
{{- $database := merge (dict "secret" (dict "url" "" "annotations" (dict))) (deepCopy $own) -}}
{{- $values := merge (dict "database" $database) (omit .values "database") -}}
{{- $_ := set . "values" $values -}}
{{- $_ := set . "databaseValues" "wait.database" -}}
{{- end -}}
{{- end -}}

{{/*
The fleet Job's scope: the migration Job's (hook, retries, deadline, resources, metrics, archive
key), as an Indexed Job of fleet.shards completions whose pod runs
`upgrade --fleet /etc/dbmigrate/fleet.toml --shards <shards> --parallel <parallel> <extraArgs>`;
dbmigrate takes its shard index from JOB_COMPLETION_INDEX. Fills a scope made with "dbmigrate.scope".
*/}}
{{- define "dbmigrate.fleetScope" -}}
{{- include "dbmigrate.migrationScope" . -}}
{{- $fleet := .values.fleet -}}
{{- include "dbmigrate.validateFleet" . -}}
{{- $shards := int $fleet.shards -}}
{{- $parallelism := $shards -}}
{{- if ne (toString $fleet.parallelism) "" -}}
{{- $parallelism = int $fleet.parallelism -}}
{{- end -}}
{{- $args := list "upgrade" "--fleet" "/etc/dbmigrate/fleet.toml" "--shards" (toString $shards) "--parallel" (toString $fleet.parallel) -}}
{{- $_ := set . "fleet" true -}}
{{- $_ := set . "suffix" "fleet" -}}
{{- $_ := set . "args" (concat $args ($fleet.extraArgs | default list)) -}}
{{- $_ := set . "indexed" (dict "completions" $shards "parallelism" $parallelism "backoffLimitPerIndex" $fleet.backoffLimitPerIndex) -}}
{{- end -}}

{{/*
Fails the render when the fleet values cannot work. Takes a scope.
*/}}
{{- define "dbmigrate.validateFleet" -}}
{{- $fleet := .values.fleet -}}
{{- if and $fleet.file $fleet.existingConfigMap.name -}}
{{- fail "fleet.file and fleet.existingConfigMap.name are both set: the fleet file comes from one of them" -}}
{{- end -}}
{{- if not (or $fleet.file $fleet.existingConfigMap.name) -}}
{{- fail "fleet.enabled needs the fleet file: fleet.file (its TOML text, e.g. --set-file fleet.file=fleet.toml) or fleet.existingConfigMap.name" -}}
{{- end -}}
{{- if include "dbmigrate.hasPassword" $fleet.file -}}
{{- fail "fleet.file holds a URL with a password: a ConfigMap is readable by anyone who can list it; use password_env (with extraEnv valueFrom.secretKeyRef) or password_file" -}}
{{- end -}}
{{- if and (ne (toString $fleet.backoffLimitPerIndex) "") (semverCompare "<1.29-0" .root.Capabilities.KubeVersion.Version) -}}
{{- fail (printf "fleet.backoffLimitPerIndex needs Kubernetes 1.29 or later, and this cluster is %s: leave it empty (a failed pod then counts against migration.backoffLimit for the whole Job)" .root.Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- range $i, $arg := $fleet.extraArgs | default list -}}
{{- if include "dbmigrate.hasPassword" $arg -}}
{{- fail (printf "fleet.extraArgs[%d] holds a URL with a password: arguments are visible to anyone who can read the pod" $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The ConfigMap holding the fleet file: fleet.existingConfigMap.name (tpl), or the chart's own,
<fullname>-fleet. Takes a scope.
*/}}
{{- define "dbmigrate.fleetConfigMapName" -}}
{{- with .values.fleet.existingConfigMap.name -}}
{{- tpl . $.root -}}
{{- else -}}
{{- include "dbmigrate.resourceName" (list . "fleet") -}}
{{- end -}}
{{- end -}}

{{/*
The key of the fleet file in that ConfigMap. Takes a scope.
*/}}
{{- define "dbmigrate.fleetConfigMapKey" -}}
{{- if .values.fleet.existingConfigMap.name -}}
{{- .values.fleet.existingConfigMap.key | default "fleet.toml" -}}
{{- else -}}
fleet.toml
{{- end -}}
{{- end -}}
