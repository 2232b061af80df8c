#!/bin/sh
# docker/chroot-smoke.sh IMAGE DATABASE_URL BROKER_URL
#
# Runs the built image's commands where no container can be started (no engine, no
# registry): the image's root filesystem is mounted read-only with `podman image mount`,
# /tmp and /var/lib/celeriac are tmpfs (as the chart's emptyDirs), and each command runs in
# a chroot as UID 10001 with the image's environment, on the host's network (loopback
# PostgreSQL and Redis). Checks: `celeriac --help`, `celeriac migrate`, a worker that
# answers a ping task and writes its liveness heartbeat, which celeriac-alive accepts.
# Needs root (mount namespaces); podman's flags come from $PODMAN (default: podman).
set -eu
image="$1" database_url="$2" broker_url="$3"
podman="${PODMAN:-podman}"
root="$($podman image mount "$image")"
trap '$podman image unmount "$image" >/dev/null' EXIT
env_file="$(mktemp)"
$podman image inspect "$image" --format '{{range .Config.Env}}{{println .}}{{end}}' > "$env_file"

exec unshare --mount --propagation private sh -eu -s "$root" "$env_file" "$database_url" \
  "$broker_url" <<'INNER'
root="$1" env_file="$2" database_url="$3" broker_url="$4"
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o size=256m,uid=10001,gid=10001 tmpfs "$root/tmp"
mount -t tmpfs -o size=64m,uid=10001,gid=10001 tmpfs "$root/var/lib/celeriac"
mount -t proc proc "$root/proc"
run() {
    # The image's environment (ENV), its USER and WORKDIR, plus the settings given here.
    env -i $(cat "$env_file") CELERIAC_DATABASE_URL="$database_url" \
      CELERIAC_BROKER_URL="$broker_url" CELERIAC_REDIS_URL="$broker_url" \
      CELERIAC_WORKERS__HEARTBEAT_SECONDS=1 \
      chroot --userspec=10001:10001 "$root" sh -c 'cd /var/lib/celeriac && exec "$@"' - "$@"
}
echo "== celeriac --help"
run celeriac --help
echo "== celeriac migrate"
run celeriac migrate
echo "== writing to the root filesystem is refused"
if run sh -c 'touch /opt/celeriac/x' 2>/dev/null; then echo "root is writable" >&2; exit 1; fi
echo "== worker --pool orchestration, then a ping task"
run celeriac worker --pool orchestration --concurrency 4 > "$root/tmp/worker.log" 2>&1 &
worker=$!
answer="$(run python -c '
import sys, time
from celeriac.workers.celery_app import app
deadline = time.monotonic() + 120
while True:
    try:
        result = app.send_task("celeriac.orchestration.ping", queue="orchestration")
        print(result.get(timeout=10))
        break
    except Exception as exc:
        if time.monotonic() > deadline:
            sys.exit(f"no answer: {exc!r}")
')"
echo "ping answered: $answer"
test "$answer" = orchestration
echo "== celeriac-alive on the worker's heartbeat"
i=0
until run celeriac-alive /var/lib/celeriac/heartbeat/orchestration 5; do
    i=$((i + 1)); [ "$i" -lt 60 ] || { cat "$root/tmp/worker.log"; exit 1; }; sleep 1
done
echo "heartbeat fresh"
kill -TERM "$worker"; wait "$worker" || true
echo "== all passed"
INNER
