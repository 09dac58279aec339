{{/* Metrics: the exporter, its ServiceMonitor, alert rules and the Grafana dashboard. */}}
{{- define "datasurface.metrics.fullname" -}}
{{- include "datasurface.componentName" (dict "ctx" . "suffix" "exporter") -}}
{{- end -}}

{{/* The scrape job's name: the prometheus-operator names it after the Service. */}}
{{- define "datasurface.metrics.job" -}}
{{- include "datasurface.metrics.fullname" . -}}
{{- end -}}

{{/* The longest gap, in seconds, between two runs of an Airflow schedule (cron or preset); "" when the
     schedule never repeats (@once, None). An upper bound for cron expressions, from the first field
     that is not "*": month 366 days, day of month 31 days, day of week 7 days, hour 1 day (N hours for
     a step of N), minute 1 hour (N minutes for a step of N), every minute 60 s. */}}
{{- define "datasurface.metrics.scheduleSeconds" -}}
{{- $s := default "" . | toString | trim -}}
{{- $presets := dict "@hourly" 3600 "@daily" 86400 "@midnight" 86400 "@weekly" 604800 "@monthly" 2678400 "@quarterly" 7948800 "@yearly" 31622400 "@annually" 31622400 "@continuous" 0 -}}
{{- if hasKey $presets $s -}}
{{- get $presets $s -}}
{{- else if has $s (list "" "@once" "None" "none" "null") -}}
{{- else if hasPrefix "@" $s -}}
{{- fail (printf "metrics.prometheusRule: unknown schedule preset %q: set metrics.prometheusRule.staleAfterSeconds for its platform" $s) -}}
{{- else -}}
{{- $f := splitList " " (regexReplaceAll "\\s+" $s " ") -}}
{{- if ne (len $f) 5 -}}
{{- fail (printf "metrics.prometheusRule: cannot derive an allowance from schedule %q (5 cron fields expected): set metrics.prometheusRule.staleAfterSeconds for its platform" $s) -}}
{{- end -}}
{{- $minute := index $f 0 -}}{{- $hour := index $f 1 -}}
{{- if ne (index $f 3) "*" -}}31622400
{{- else if ne (index $f 2) "*" -}}2678400
{{- else if ne (index $f 4) "*" -}}604800
{{- else if ne $hour "*" -}}
{{- if regexMatch "^\\*/[0-9]+$" $hour -}}{{ mul (trimPrefix "*/" $hour | atoi) 3600 }}{{- else -}}86400{{- end -}}
{{- else if ne $minute "*" -}}
{{- if regexMatch "^\\*/[0-9]+$" $minute -}}{{ mul (trimPrefix "*/" $minute | atoi) 60 }}{{- else -}}3600{{- end -}}
{{- else -}}60
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Seconds without a commit after which a platform's streams are stale: the override in
     metrics.prometheusRule.staleAfterSeconds, else the schedule's longest gap + the platform's
     executionTimeoutSeconds (a run may take that long; a group's run, that for each round of
     parallelStores stores, at most a week, as its DAG allows) + metrics.prometheusRule.staleGraceSeconds.
     "" when the schedule never repeats. Call with (dict "ctx" $ "platform" .). */}}
{{- define "datasurface.metrics.staleAfter" -}}
{{- $rule := .ctx.Values.metrics.prometheusRule -}}
{{- if hasKey $rule.staleAfterSeconds .platform.name -}}
{{- get $rule.staleAfterSeconds .platform.name | int -}}
{{- else -}}
{{- include "datasurface.checkSchedule" (dict "platform" .platform "key" "schedule") -}}
{{- $gap := include "datasurface.metrics.scheduleSeconds" .platform.schedule -}}
{{- if ne $gap "" -}}
{{- $d := .ctx.Values.platformDefaults -}}
{{- $timeout := .platform.executionTimeoutSeconds | default $d.executionTimeoutSeconds | int -}}
{{- $perTask := hasKey .platform "storesPerTask" | ternary .platform.storesPerTask $d.storesPerTask | int -}}
{{- if gt $perTask 1 -}}
{{- $parallel := hasKey .platform "parallelStores" | ternary .platform.parallelStores $d.parallelStores | int -}}
{{- $biggest := min $perTask (len .platform.stores) -}}
{{- $rounds := div (sub (add $biggest $parallel) 1) $parallel -}}
{{- $timeout = min (mul $timeout $rounds) 604800 -}}
{{- end -}}
{{- add (atoi $gap) $timeout (int $rule.staleGraceSeconds) -}}
{{- end -}}
{{- end -}}
{{- end -}}
