#!/usr/bin/env bash
# Start Redis and RabbitMQ on loopback when they are installed but not running
# (commands from the machine notes). Never fails the build by itself: the tests
# decide whether a missing service is a skip or, with CI set, a failure.
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if command -v redis-server >/dev/null 2>&1 && ! port_open 6379; then
    echo "services: starting redis-server"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log \
        || echo "services: redis-server did not start"
fi

if command -v rabbitmq-server >/dev/null 2>&1 && ! port_open 5672; then
    echo "services: starting rabbitmq-server"
    rabbitmq-server -detached || echo "services: rabbitmq-server did not start"
fi

# Tools the suite needs under CI (where a missing one is a failure, not a skip): Chromium for
# the Flower page test, a compose client for checking deploy/compose.yaml, nsd and unbound
# for the DANE tests (an authoritative server for the signed test zone, a validating resolver),
# and promtool (Debian's prometheus) for the metrics page.
if [ -n "${CI:-}" ] && command -v apt-get >/dev/null 2>&1; then
    need=""
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
    command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 \
        || need="$need docker-compose"
    for tool in nsd unbound; do
        command -v $tool >/dev/null 2>&1 || [ -x /usr/sbin/$tool ] || need="$need $tool"
    done
    command -v promtool >/dev/null 2>&1 || need="$need prometheus"  # promtool checks /metrics
    if [ -n "$need" ]; then
        echo "services: installing$need (CI)"
        apt-get update -qq >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null 2>&1 \
            || echo "services: could not install$need"
    fi
fi

# Wait (bounded) for whatever was started to accept connections.
for _ in $(seq 1 60); do
    ok=1
    if command -v redis-server >/dev/null 2>&1 && ! port_open 6379; then ok=0; fi
    if command -v rabbitmq-server >/dev/null 2>&1 && ! port_open 5672; then ok=0; fi
    [ $ok = 1 ] && break
    sleep 1
done
if command -v rabbitmqctl >/dev/null 2>&1 && port_open 5672; then
    timeout 60 rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
exit 0
