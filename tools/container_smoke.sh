#!/usr/bin/env bash
# Build the Dockerfile with podman and check the image end to end (not run by CI; needs root, ~5 min the
# first time). Follows ../shared/CONTAINERS.md: no Docker engine and no pullable base image here, so a
# debootstrapped Debian stands in for python:3.11-slim. Steps: lint, build, run on a free port with
# --network host, wait for the HEALTHCHECK, run the tutorial from the host through the container and
# compare it with the embedded engine's output, stop with SIGTERM and check the drain was logged.
# Usage: tools/container_smoke.sh [python-with-gradserve-installed]   (default: python3)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${1:-python3}
WORK=${GRADSERVE_SMOKE_DIR:-/tmp/gradserve-container}
IMAGE=localhost/gradserve:smoke
NAME=gradserve-smoke
mkdir -p "$WORK"

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    apt-get update && apt-get install -y podman buildah runc debootstrap
fi

# crun cannot raise RLIMIT_NOFILE here and rejects the hybrid cgroup setup: use runc and fixed ulimits.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

if ! podman image exists docker.io/library/python:3.11-slim; then
    if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs"
    fi
    # The machine's extra CAs, so that pip inside the build can reach the package index.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$WORK/rootfs" update-ca-certificates
    tar -C "$WORK/rootfs" -c . | podman import - localhost/base
    podman tag localhost/base docker.io/library/python:3.11-slim
fi

if command -v hadolint >/dev/null; then
    hadolint "$REPO/Dockerfile"
fi

podman build --format docker --network host -t "$IMAGE" "$REPO"
podman image inspect "$IMAGE" --format 'image {{.Id}}: {{.Size}} bytes'

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
podman rm -f "$NAME" >/dev/null 2>&1 || true
podman run -d --name "$NAME" --network host --shm-size 1g -e GRADSERVE_PORT="$PORT" "$IMAGE" --workers 2
trap 'podman rm -f "$NAME" >/dev/null 2>&1 || true' EXIT

for _ in $(seq 30); do
    if podman healthcheck run "$NAME"; then
        break
    fi
    sleep 1
done
podman healthcheck run "$NAME"
echo "healthcheck: $(podman inspect "$NAME" --format '{{.State.Health.Status}}')"

remote=$(GRADSERVE_TARGET="127.0.0.1:$PORT" "$PYTHON" "$REPO/examples/grad_operation_tutorial.py")
embedded=$(env -u GRADSERVE_TARGET "$PYTHON" "$REPO/examples/grad_operation_tutorial.py")
echo "$remote"
if [ "$remote" != "$embedded" ]; then
    echo "the tutorial through the container differs from the embedded engine" >&2
    exit 1
fi
echo "tutorial through the container on port $PORT: identical to the embedded engine"

podman stop --time 30 "$NAME" >/dev/null
echo "exit code after SIGTERM: $(podman inspect "$NAME" --format '{{.State.ExitCode}}')"
podman logs "$NAME" 2>&1 | tail -n 2
