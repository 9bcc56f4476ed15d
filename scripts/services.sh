#!/usr/bin/env bash
# Start the real services the integration tests use, when nothing listens yet:
# Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432 (database "test") and RabbitMQ on :5672.
set -euo pipefail

# A fresh Debian/Ubuntu machine where we are root: install what is missing.
apt_install() {
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $* (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is not installed: apt-get install redis-server (or brew install redis)" >&2
    exit 1
  fi
  mkdir -p /tmp/specq-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/specq-redis --logfile /tmp/specq-redis/redis.log
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
echo "redis: $(redis-cli -h 127.0.0.1 -p 6379 ping)"

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql
    # The tests connect as postgres over TCP without a password: trust it, on this
    # freshly installed test cluster only.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      if [ -f "$hba" ]; then sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"; fi
    done
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    # Already running counts as started (the package may start its cluster); a reload
    # picks up an edited pg_hba.conf either way.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
    for _ in $(seq 100); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.1; done
  else
    echo "PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is absent" >&2
    exit 1
  fi
fi
if ! psql -h 127.0.0.1 -U postgres -d test -c "select 1" >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -c "create database test" >/dev/null
fi
echo "postgresql: $(pg_isready -h 127.0.0.1 -p 5432)"

# RabbitMQ on 127.0.0.1:5672 (guest/guest): the tests give each test a virtual host of its
# own with rabbitmqctl, and remove it after.
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  command -v rabbitmq-server >/dev/null 2>&1 || apt_install rabbitmq-server
  if command -v rabbitmq-server >/dev/null 2>&1; then
    rabbitmq-server -detached >/dev/null 2>&1 || true
    rabbitmqctl await_startup >/dev/null 2>&1 || rabbitmqctl wait --timeout 60 >/dev/null 2>&1 || true
  else
    echo "rabbitmq-server is not installed: the RabbitMQ tests fail (apt-get install rabbitmq-server)" >&2
  fi
fi
echo "rabbitmq: $(rabbitmqctl version 2>/dev/null || echo 'not running')"
