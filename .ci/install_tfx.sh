#!/usr/bin/env bash
# Installs TFX into a virtual environment of its own and prints that
# environment's python on stdout (progress goes to stderr):
#
#   export L2TL_TFX_PYTHON="$(bash .ci/install_tfx.sh)"
#
# Why a separate venv: tfx pins its own protobuf (<7) and absl-py (<2), which
# must not change the main test environment.
#
# Why a private glibc: tfx 1.21.0 is the only TFX for Python 3.11, and its
# ml-metadata, TFDV and tfx-bsl wheels are manylinux_2_39 (glibc >= 2.39).
# Where the machine's glibc is older (Debian 12 has 2.36), this script takes
# libc6, libstdc++6 and libgcc-s1 from Debian trixie with apt-get under a
# private state directory (the machine's apt sources and state are untouched),
# unpacks them with dpkg-deb -x, and makes the venv's python a wrapper that
# starts the real interpreter through trixie's dynamic loader with
# --library-path. The system's libc is never replaced. Because the wrapper
# passes itself as argv[0], sys.executable is the wrapper, so everything that
# re-runs sys.executable (pip's wheel installs inside the TFX Trainer, Beam
# workers, multiprocessing) also gets the newer glibc; other programs started
# from it (gcc, git, sh) keep the system's. On glibc >= 2.39 (Debian 13) the
# venv is a plain one.
#
# Idempotent: a venv that starts and whose stamp matches (interpreter, glibc
# mode, TFX version, setup.py) is reused as it is; after a change to setup.py
# or the TFX version only the pip install reruns. The l2tl_tf package itself
# is not left in the venv: callers put the checkout on PYTHONPATH, so the code
# tested is always the checkout's.
#
# Environment:
#   L2TL_TFX_HOME  where the venv and the private glibc live
#                  (default: ${XDG_CACHE_HOME:-$HOME/.cache}/l2tl-tfx).
#   PYTHON         interpreter to base the venv on (default: python3).
set -euo pipefail

TFX_VERSION=1.21.0
# The glibc that TFX_VERSION's manylinux wheels ask for.
REQUIRED_GLIBC=2.39
# A Debian suite whose libc6 is at least REQUIRED_GLIBC (trixie: 2.41).
GLIBC_SUITE=trixie
DEBIAN_MIRROR=http://deb.debian.org/debian

REPO="$(cd "$(dirname "$0")/.." && pwd)"
TFX_HOME="${L2TL_TFX_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/l2tl-tfx}"
PYTHON="${PYTHON:-python3}"
VENV="$TFX_HOME/venv"
GLIBC_ROOT="$TFX_HOME/glibc-$GLIBC_SUITE"

log() { echo "install_tfx: $*" >&2; }

version_at_least() {  # version_at_least HAVE NEED
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# The real interpreter (not a pyenv shim), so the wrapper can exec it directly.
BASE_PYTHON="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
MULTIARCH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("MULTIARCH") or "")')"
[ -n "$MULTIARCH" ] || MULTIARCH="$(gcc -print-multiarch)"
SYSTEM_GLIBC="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"

if version_at_least "$SYSTEM_GLIBC" "$REQUIRED_GLIBC"; then
  GLIBC_MODE=system
else
  GLIBC_MODE="$GLIBC_SUITE"
fi
# What the venv itself depends on, and what is installed in it.
VENV_STAMP="python=$BASE_PYTHON glibc=$GLIBC_MODE"
STAMP="$VENV_STAMP tfx=$TFX_VERSION setup.py=$(sha256sum "$REPO/setup.py" | cut -c1-16)"

if [ "$(cat "$VENV/.l2tl_tfx_stamp" 2>/dev/null)" = "$STAMP" ] \
    && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "reusing $VENV ($STAMP)"
  echo "$VENV/bin/python"
  exit 0
fi

fetch_glibc() {
  # apt-get with its own sources, lists, cache and an empty dpkg status:
  # nothing under /etc/apt or /var/lib/apt changes.
  local apt_dir="$TFX_HOME/apt" debs="$TFX_HOME/debs"
  rm -rf "$apt_dir" "$debs" "$GLIBC_ROOT.partial"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts" "$debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $GLIBC_SUITE main" \
    > "$apt_dir/sources.list"
  : > "$apt_dir/status"
  local apt_options=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=$apt_dir/parts"
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o "Dir::State::status=$apt_dir/status" -o "APT::Sandbox::User=root")
  log "fetching libc6, libstdc++6, libgcc-s1 from Debian $GLIBC_SUITE"
  apt-get -qq "${apt_options[@]}" update >&2
  (cd "$debs" && apt-get -qq "${apt_options[@]}" download libc6 libstdc++6 libgcc-s1 >&2)
  for deb in "$debs"/*.deb; do
    dpkg-deb -x "$deb" "$GLIBC_ROOT.partial"
  done
  rm -rf "$GLIBC_ROOT" "$apt_dir" "$debs"
  mv "$GLIBC_ROOT.partial" "$GLIBC_ROOT"
}

write_wrapper() {
  # Replaces the venv's python symlinks with a script that runs the real
  # interpreter under the private loader and libraries.
  local libdir="$GLIBC_ROOT/usr/lib/$MULTIARCH" loader
  loader="$(ls "$libdir"/ld-linux*.so.* | head -n1)"
  "$loader" --library-path "$libdir" "$BASE_PYTHON" -c 'pass' \
    || { log "the $GLIBC_SUITE loader cannot run $BASE_PYTHON"; exit 1; }
  local name
  for name in python python3 "$(basename "$BASE_PYTHON")"; do
    rm -f "$VENV/bin/$name"
  done
  cat > "$VENV/bin/python" <<EOF
#!/bin/sh
# Written by .ci/install_tfx.sh: $BASE_PYTHON with the glibc of Debian $GLIBC_SUITE.
exec "$loader" --library-path "$libdir" --argv0 "\$0" "$BASE_PYTHON" "\$@"
EOF
  chmod +x "$VENV/bin/python"
  for name in python3 "$(basename "$BASE_PYTHON")"; do
    ln -s python "$VENV/bin/$name"
  done
}

started=$SECONDS
if [ "$(cat "$VENV/.l2tl_venv_stamp" 2>/dev/null)" != "$VENV_STAMP" ] \
    || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  log "creating $VENV ($VENV_STAMP)"
  rm -rf "$VENV"
  mkdir -p "$TFX_HOME"
  if [ "$GLIBC_MODE" != system ] && [ ! -e "$GLIBC_ROOT/usr/lib/$MULTIARCH/libc.so.6" ]; then
    fetch_glibc
  fi
  "$PYTHON" -m venv "$VENV"
  if [ "$GLIBC_MODE" != system ]; then
    write_wrapper
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  echo "$VENV_STAMP" > "$VENV/.l2tl_venv_stamp"
fi
"$VENV/bin/python" -c 'import platform; print("install_tfx: venv python runs with", *platform.libc_ver())' >&2
log "installing tfx==$TFX_VERSION and l2tl_tf's requirements ($STAMP)"
# tfx and l2tl_tf's own requirements, resolved together: l2tl_tf must work
# with what tfx pins. The package itself is removed again (see above). The
# Trainer builds the module file's wheel with setuptools and wheel.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "tfx==$TFX_VERSION" "$REPO" setuptools wheel >&2
"$VENV/bin/python" -m pip uninstall --quiet --yes l2tl_tf >&2
"$VENV/bin/python" -m pip check >&2 || log "pip check reported conflicts (above)"
echo "$STAMP" > "$VENV/.l2tl_tfx_stamp"
log "installed in $((SECONDS - started)) s"
echo "$VENV/bin/python"
