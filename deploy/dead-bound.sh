#!/usr/bin/env bash
# Bounds the dead-letter queue `chorus.dead` with a RabbitMQ policy, so that a poison storm cannot
# fill the broker's disk (docs/operations.md#bounding-chorusdead).
#
# A policy, not queue arguments: RabbitMQ refuses to redeclare an existing queue with other
# arguments (PRECONDITION_FAILED), so `x-max-length` in the services' declaration would stop every
# service of a deployment whose `chorus.dead` exists; a policy applies to the existing queue at
# once, and changes or goes away without touching it or the services.
#
# Overflow is `drop-head`: past the bound the OLDEST dead letters are dropped, for good, to make
# room for new ones (quorum queues also offer `reject-publish`, which would make every
# dead-lettering publish fail and the message go back to its queue to loop). The broker logs
# nothing per dropped message: alert on the queue's length nearing the bound.
#
# Usage: deploy/dead-bound.sh [--vhost V] [--max-length N] [--max-age-ms MS] [--remove]
#   --vhost V         the deployment's vhost (default /)
#   --max-length N    most dead letters kept (default 100000)
#   --max-age-ms MS   dead letters older than this are dropped too (message-ttl; default none)
#   --remove          remove the policy: chorus.dead unbounded again
# Settings (environment):
#   RABBITMQCTL  the rabbitmqctl command (default `rabbitmqctl`; for the private broker of
#                deploy/services.sh: RABBITMQCTL="deploy/services.sh rabbitmqctl")
set -euo pipefail

POLICY=chorus-dead
vhost=/
max_length=100000
max_age_ms=
remove=0
die() {
    printf 'dead-bound.sh: %s\n' "$1" >&2
    exit 64
}
while (($#)); do
    case "$1" in
    --vhost) vhost="${2:?--vhost needs a value}"; shift 2 ;;
    --max-length) max_length="${2:?--max-length needs a value}"; shift 2 ;;
    --max-age-ms) max_age_ms="${2:?--max-age-ms needs a value}"; shift 2 ;;
    --remove) remove=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
    esac
done
[[ "$max_length" =~ ^[1-9][0-9]*$ ]] || die "--max-length must be a positive integer, got $max_length"
[[ -z "$max_age_ms" || "$max_age_ms" =~ ^[1-9][0-9]*$ ]] ||
    die "--max-age-ms must be a positive integer, got $max_age_ms"

# Word splitting on purpose: RABBITMQCTL may be a command with arguments.
read -r -a ctl <<<"${RABBITMQCTL:-rabbitmqctl}"
if ((remove)); then
    "${ctl[@]}" -q clear_policy -p "$vhost" "$POLICY"
    echo "chorus.dead in vhost $vhost: unbounded (policy $POLICY removed)"
    exit 0
fi
definition="{\"max-length\": $max_length, \"overflow\": \"drop-head\""
if [[ -n "$max_age_ms" ]]; then
    definition+=", \"message-ttl\": $max_age_ms"
fi
definition+="}"
# Priority 10: above a catch-all policy of priority 0 (only one policy applies to a queue).
"${ctl[@]}" -q set_policy -p "$vhost" --apply-to queues --priority 10 \
    "$POLICY" '^chorus\.dead$' "$definition"
echo "chorus.dead in vhost $vhost: at most $max_length dead letters${max_age_ms:+, none older than $max_age_ms ms}; the oldest are dropped past it"
