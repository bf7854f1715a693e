#!/usr/bin/env bash
# What the tests need beyond Python, installed or started when missing: PostgreSQL and MariaDB on
# their usual loopback ports, and Debian's prometheus-pushgateway binary (the metrics tests start
# their own on a free port). Called by `make test`; safe to run again.
set -euo pipefail

wait_for() {  # wait_for NAME COMMAND...: up to 60 s
    local name=$1; shift
    for _ in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 1
    done
    echo "$name did not come up" >&2
    return 1
}

if ! command -v prometheus-pushgateway >/dev/null 2>&1 && [ ! -x /usr/bin/prometheus-pushgateway ]; then
    echo "installing prometheus-pushgateway (Debian package)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus-pushgateway >/dev/null
fi

if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432

if ! mariadb-admin -uroot -h127.0.0.1 ping >/dev/null 2>&1; then
    echo "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
fi
wait_for MariaDB mariadb-admin -uroot -h127.0.0.1 ping
