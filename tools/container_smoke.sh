#!/usr/bin/env bash
# Build the Dockerfile with podman and prove the image works end to end; .ci/run runs it with --fresh.
# Needs root on Debian (apt-get, debootstrap, podman with runc); about 5 minutes with --fresh.
# Follows ../shared/CONTAINERS.md: no Docker engine and no pullable base image here, so a debootstrapped
# Debian bookworm stands in for python:3.11-slim. Steps: install podman, runc and debootstrap if missing;
# bootstrap the stand-in; lint (when hadolint is on PATH); build; check the final image (labels, user,
# no pip, compilers or source tree); run it on a free port with --network host and wait for its
# HEALTHCHECK; run the tutorial from the host through the container and compare it with the embedded
# engine's output; register examples/node/fixtures/mlp.onnx by its bytes (RegisterNetwork onnx_model, so the
# image's server converts it with its onnx extra) and compare its gradient with the embedded engine's; SIGTERM it and check it drained and exited 0. Every wait is bounded; the container,
# and with --fresh everything the run created, is removed on exit.
# Usage: tools/container_smoke.sh [--fresh] [PYTHON]
#   PYTHON: an interpreter with gradserve installed, for the host side (default: python3).
#   --fresh: bootstrap a new stand-in and build without any cache, removing both afterwards (CI);
#            without it the stand-in and $GRADSERVE_SMOKE_DIR/rootfs are reused across runs.
set -Eeuo pipefail

fresh=false
if [ "${1:-}" = --fresh ]; then
    fresh=true
    shift
fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${1:-python3}
BASE=docker.io/library/python:3.11-slim
IMAGE=localhost/gradserve:smoke
NAME=gradserve-smoke-$$
WORK=${GRADSERVE_SMOKE_DIR:-/tmp/gradserve-container}
LOCK=/tmp/gradserve-container-smoke.lock
base_id=""
fresh_dir=""
locked=false
container_started=false
failed=false

say() { echo "== container smoke [${SECONDS}s]: $*"; }
fail() {
    failed=true
    echo "container smoke FAILED: $*" >&2
    exit 1
}
on_error() {
    local rc=$?
    failed=true
    echo "container smoke FAILED: line $1: \`$2\` exited $rc" >&2
}
trap 'on_error "$LINENO" "$BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

cleanup() {
    if $container_started; then
        if $failed; then
            echo "---- last container log lines ----" >&2
            podman logs --tail 40 "$NAME" >&2 2>&1 || true
        fi
        podman rm --force --time 0 "$NAME" >/dev/null 2>&1 || true
    fi
    if $fresh && $locked; then
        podman rmi --force "$IMAGE" >/dev/null 2>&1 || true
        if [ -n "$base_id" ]; then
            podman rmi --force "$base_id" >/dev/null 2>&1 || true
        fi
    fi
    if [ -n "$fresh_dir" ]; then
        if mountpoint -q "$fresh_dir"; then
            umount "$fresh_dir" || true
        fi
        rm -rf "$fresh_dir" || echo "container smoke: could not remove $fresh_dir" >&2
    fi
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || fail "needs root (apt-get, debootstrap, chroot and podman with runc as root)"
"$PYTHON" -c 'import gradserve' || fail "$PYTHON cannot import gradserve: pass an interpreter that has it installed"

# One run at a time per machine: runs share the image tags and podman's store.
exec 9>"$LOCK"
flock --wait 1200 9 || fail "another container smoke run still holds $LOCK after 20 minutes"
locked=true

if $fresh; then
    fresh_dir=$(mktemp -d /tmp/gradserve-container.XXXXXX)
    WORK=$fresh_dir
    # In memory: dpkg syncs every file debootstrap unpacks, which is slow on a busy disk, and this tree
    # is thrown away after the import anyway.
    mount -t tmpfs -o size=2g,mode=0700 gradserve-smoke "$fresh_dir" \
        || say "could not mount a tmpfs on $fresh_dir: bootstrapping on disk"
fi
mkdir -p "$WORK"

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    say "installing podman, runc and debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -q || fail "apt-get update failed or took over 5 minutes"
    timeout 600 apt-get install -y -q podman buildah runc debootstrap \
        || fail "apt-get install podman buildah runc debootstrap failed or took over 10 minutes"
fi

# crun cannot raise RLIMIT_NOFILE here and rejects the hybrid cgroup setup: use runc and fixed ulimits.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"

if $fresh || ! podman image exists "$BASE"; then
    if [ ! -x "$WORK/rootfs/usr/bin/python3" ]; then
        say "debootstrapping Debian bookworm as the stand-in for $BASE"
        rm -rf "$WORK/rootfs"
        timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" \
            >"$WORK/debootstrap.log" 2>&1 \
            || { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed or took over 15 minutes (log above)"; }
    fi
    # The machine's extra CAs, so that pip inside the build can reach the package index.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$WORK/rootfs" update-ca-certificates >/dev/null 2>&1 || fail "update-ca-certificates in the stand-in failed"
    base_id=$(tar -C "$WORK/rootfs" -c . | podman import --quiet - localhost/gradserve-smoke-base)
    podman tag "$base_id" "$BASE"
    if $fresh; then
        rm -rf "$WORK/rootfs"
    fi
fi

if command -v hadolint >/dev/null; then
    say "hadolint"
    hadolint "$REPO/Dockerfile"
fi

say "building $IMAGE"
build_flags=(--format docker --network host --pull=never)
if $fresh; then
    build_flags+=(--no-cache --layers=false)
fi
timeout 900 podman build "${build_flags[@]}" -t "$IMAGE" "$REPO" || fail "podman build failed or took over 15 minutes"
podman image inspect "$IMAGE" --format 'image {{.Id}}: {{.Size}} bytes'

say "checking the final image"
label() { podman image inspect "$IMAGE" --format "{{index .Labels \"org.opencontainers.image.$1\"}}"; }
version=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("gradserve"))')
[ "$(label version)" = "$version" ] || fail "label org.opencontainers.image.version is '$(label version)', gradserve is $version"
for key in title description licenses; do
    [ -n "$(label "$key")" ] || fail "label org.opencontainers.image.$key is missing"
done
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
[ "$user" = 10001:10001 ] || fail "the image runs as '$user', expected the non-root 10001:10001"
# As root inside, so that no directory is hidden from the check by its permissions.
timeout 120 podman run --rm --network none --user 0 --entrypoint /opt/venv/bin/python "$IMAGE" -c '
import importlib.util, pathlib, shutil, sys
import gradserve
problems = [f"the venv has {m}" for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m)]
problems += [f"{p} exists" for p in ("/src", "/root/.cache", "/home/gradserve/.cache") if pathlib.Path(p).exists()]
problems += [f"{t} is on PATH" for t in ("gcc", "cc", "c++", "make", "git") if shutil.which(t)]
sys.exit("; ".join(problems) or None)
' || fail "the final image carries build leftovers (above)"

# podman logs "unable to get systemd connection" errors around the run: there is no systemd here to time
# the HEALTHCHECK, so the loop below runs it.
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "running $NAME on port $PORT"
container_started=true
podman run -d --name "$NAME" --network host --shm-size 1g -e GRADSERVE_PORT="$PORT" "$IMAGE" --workers 2 >/dev/null

deadline=$((SECONDS + 90))
until timeout 30 podman healthcheck run "$NAME" >/dev/null 2>&1; do
    state=$(podman inspect "$NAME" --format '{{.State.Status}}')
    [ "$state" = running ] || fail "the container is $state before it became healthy"
    [ "$SECONDS" -lt "$deadline" ] || fail "the HEALTHCHECK did not pass within 90 s"
    sleep 1
done
say "healthcheck: $(podman inspect "$NAME" --format '{{.State.Health.Status}}')"

say "the tutorial through the container and in the embedded engine"
tutorial=$REPO/examples/grad_operation_tutorial.py
remote=$(GRADSERVE_TARGET="127.0.0.1:$PORT" timeout 300 "$PYTHON" "$tutorial") || fail "the tutorial through the container failed"
embedded=$(env -u GRADSERVE_TARGET timeout 300 "$PYTHON" "$tutorial") || fail "the tutorial in the embedded engine failed"
echo "$remote"
[ -n "$remote" ] || fail "the tutorial printed nothing"
if [ "$remote" != "$embedded" ]; then
    diff <(echo "$embedded") <(echo "$remote") >&2 || true
    fail "the tutorial through the container differs from the embedded engine (diff: embedded, container)"
fi
say "tutorial through the container: identical to the embedded engine"

say "an ONNX model registered by its bytes (RegisterNetwork onnx_model) and its gradient"
onnx_model=$REPO/examples/node/fixtures/mlp.onnx
timeout 120 "$PYTHON" - "127.0.0.1:$PORT" "$onnx_model" <<'PY' || fail "RegisterNetwork with onnx_model or Grad on it failed, or its gradient differs from the embedded engine's"
import pathlib, sys
import grpc
import numpy as np
from gradserve.engine import compile_graph, grad_operation
from gradserve.engine.onnx_import import convert, load_model
from gradserve.proto import codec
from gradserve.v1 import graph_pb2, service_pb2, service_pb2_grpc

target, path = sys.argv[1:]
data = pathlib.Path(path).read_bytes()
x = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
with grpc.insecure_channel(target) as channel:
    stub = service_pb2_grpc.GradientStub(channel)
    reg = stub.RegisterNetwork(service_pb2.RegisterNetworkRequest(onnx_model=data), timeout=60)
    resp = stub.Grad(service_pb2.GradRequest(network_id=reg.network_id, inputs=[codec.encode_tensor(x)],
                                             grad=graph_pb2.GradOperation(get_all=True)), timeout=60)
(got,) = codec.decode_tree(resp.gradients)
(want,) = compile_graph(grad_operation(convert(load_model(data)), get_all=True))(x)
np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
assert np.abs(got).max() > 0
print(f"network {reg.network_id}: dy/dx of {path.rsplit('/', 1)[-1]} equals the embedded engine's, max |dx| {np.abs(got).max():.6g}")
PY

say "SIGTERM"
timeout 60 podman stop --time 30 "$NAME" >/dev/null || fail "podman stop did not return within 60 s"
code=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
logs=$(podman logs "$NAME" 2>&1)
for event in server_draining server_stop; do
    grep -q "\"event\": \"$event\"" <<<"$logs" || fail "no $event event in the container's log after SIGTERM"
done
[ "$code" = 0 ] || fail "exit code $code after SIGTERM (137: killed after the 30 s stop timeout)"
tail -n 2 <<<"$logs"
say "drained and exited 0 after SIGTERM: the image works"
