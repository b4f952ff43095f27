#!/usr/bin/env bash
# Install Postfix's smtp-source and smtp-sink (Debian package postfix) for `make bench`,
# without ever starting Postfix itself: a policy-rc.d refuses every service start for the
# length of the install, and debconf is told "No configuration". Best effort: without
# root or apt, the benchmark uses its own injector and sink (bench/ownsource.py, ownsink.py).
set -u
command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "bench: smtp-source/smtp-sink not installed (needs root and apt); using bench's own tools"
    exit 0
fi
policy=/usr/sbin/policy-rc.d
if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; else saved=; fi
restore() { if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi; }
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >/dev/null 2>&1; then
    echo "bench: could not install postfix; using bench's own tools"
fi
exit 0
