#!/usr/bin/env bash
# Install everything Kakehashi needs on a fresh machine, idempotently:
#   - Debian packages the tests and benchmarks use (when apt-get is available and we are root)
#   - a virtualenv in .venv with the project and its extras (skipped when pyproject is unchanged)
# The Go servers of the dev environment are built by `kakehashi dev up` itself (cached).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  log "Python >= 3.11 is required (found: $("$PYTHON" --version 2>&1))"; exit 1
fi
if ! command -v go >/dev/null; then
  log "Go >= 1.26 is required to build the local clusters (k8s.io/kubernetes v1.36 needs it)"; exit 1
fi

# System packages: git (trainer clones), wrk (inference benchmark load generator); for the
# local clusters' real nodes (`kakehashi dev`): runc, the CNI plugins, iptables and conntrack
# (kube-proxy); mmdebstrap (the Debian base image) and buildah (the project's images, no
# daemon). containerd, the kubelet and kube-proxy are built from their Go modules.
APT_PACKAGES=(git wrk runc containernetworking-plugins iptables conntrack mmdebstrap buildah)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# npm packs GitHub's published webhook examples for the GitOps bot's tests (once, cached).
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "Installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "Missing Debian packages (install them yourself): ${missing[*]}"
  fi
fi

stamp=.venv/.kakehashi-installed
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  log "Creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "Installing kakehashi[all] into .venv (first time: TensorFlow is large, a few minutes)"
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet --progress-bar off -e ".[all]"
  echo "$want" > "$stamp"
fi
log "Ready: .venv/bin/kakehashi --help"
