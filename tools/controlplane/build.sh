#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kubectl, etcd), the node beside it (kubelet,
# kube-controller-manager, kube-scheduler, kube-proxy), the chart tools (helm, promtool), the monitoring
# the alert tests run live (the Prometheus server, Alertmanager) and the release tools (registry: CNCF
# Distribution, the OCI registry the release tests push to; cosign: signs and verifies) and the backup tools
# (velero, its AWS object-store plugin, versitygw: the S3 store the backups go to) from the Go module proxy,
# at the versions pinned by the go.mod files beside this script.
#
# Binaries land in ${XDG_CACHE_HOME:-$HOME/.cache}/license-keeper/controlplane/<component>-<version>/
# and are reused when present, so only the first run pays for the build. A cold build of
# kube-apiserver takes 10-20 minutes on two cores; the node about 5 more; cosign about 6 (measured 5 min 40 s;
# the registry 1 min 4 s); velero, its plugin and versitygw about 3, 2 and 1 min; the others a few minutes each.
#
# Usage: build.sh [--print-dir] [component...]
#   components: kubernetes node etcd helm prometheus alertmanager registry cosign velero velero-plugin-aws
#               versitygw (default: all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root="${LICENSE_KEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/license-keeper}/controlplane"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

# component -> "main module" and the packages to build from it
declare -A module=(
  [kubernetes]=k8s.io/kubernetes
  [node]=k8s.io/kubernetes
  [etcd]=go.etcd.io/etcd/server/v3
  [helm]=helm.sh/helm/v3
  [prometheus]=github.com/prometheus/prometheus
  [alertmanager]=github.com/prometheus/alertmanager
  [registry]=github.com/distribution/distribution/v3
  [cosign]=github.com/sigstore/cosign/v2
  [velero]=github.com/vmware-tanzu/velero
  [velero-plugin-aws]=github.com/vmware-tanzu/velero-plugin-for-aws
  [versitygw]=github.com/versity/versitygw
)
declare -A packages=(
  [kubernetes]="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl"
  [node]="k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy"
  [etcd]="go.etcd.io/etcd/server/v3"
  [helm]="helm.sh/helm/v3/cmd/helm"
  [prometheus]="github.com/prometheus/prometheus/cmd/promtool github.com/prometheus/prometheus/cmd/prometheus"
  [alertmanager]="github.com/prometheus/alertmanager/cmd/alertmanager"
  [registry]="github.com/distribution/distribution/v3/cmd/registry"
  [cosign]="github.com/sigstore/cosign/v2/cmd/cosign"
  [velero]="github.com/vmware-tanzu/velero/cmd/velero"
  [velero-plugin-aws]="github.com/vmware-tanzu/velero-plugin-for-aws/velero-plugin-for-aws"
  [versitygw]="github.com/versity/versitygw/cmd/versitygw"
)
declare -A binaries=(
  [kubernetes]="kube-apiserver kubectl"
  [node]="kubelet kube-controller-manager kube-scheduler kube-proxy"
  [etcd]="etcd"
  [helm]="helm"
  [prometheus]="promtool prometheus"
  [alertmanager]="alertmanager"
  [registry]="registry"
  [cosign]="cosign"
  [velero]="velero"
  [velero-plugin-aws]="velero-plugin-for-aws"
  [versitygw]="versitygw"
)

print_dir=0
if [[ "${1:-}" == "--print-dir" ]]; then print_dir=1; shift; fi
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(kubernetes etcd helm prometheus alertmanager node registry cosign velero velero-plugin-aws versitygw)

command -v go >/dev/null || { echo "build.sh: Go is required to build the test control plane (go not found on PATH)" >&2; exit 1; }

version_of() {  # the pinned version, read from go.mod without touching the network
  # in a require block (`M vX`) or on a require line of its own (`require M vX`)
  awk -v m="${module[$1]}" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ {print $2; exit}' "$here/$1/go.mod"
}

# Alertmanager's web UI is embedded from ui/app/dist, which its release process builds with npm and the
# module zip leaves out, so `go build` of the module fails ("pattern app/dist: no matching files found").
# The tests use its API only: build a copy of the module's source (as downloaded and checked against
# go.sum) with a placeholder page there, through a go.mod copy that replaces the module with that copy.
# Prints the -modfile argument for go build.
alertmanager_modfile() {  # version, work directory
  local src
  src=$(cd "$here/alertmanager" && go mod download -json "${module[alertmanager]}@$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [[ -d "$src" ]] || { echo "build.sh: could not download ${module[alertmanager]}@$1" >&2; return 1; }
  cp -r "$src" "$2/alertmanager" && chmod -R u+w "$2/alertmanager"
  mkdir -p "$2/alertmanager/ui/app/dist/elm" "$2/alertmanager/ui/app/dist/mantine"
  local page='<p>Alertmanager built by license-keeper from the Go module: no web UI; the API is served.</p>'
  echo "$page" >"$2/alertmanager/ui/app/dist/elm/index.html"
  echo "$page" >"$2/alertmanager/ui/app/dist/mantine/index.html"
  cp "$here/alertmanager/go.mod" "$2/go.mod" && cp "$here/alertmanager/go.sum" "$2/go.sum"
  go mod edit -replace="${module[alertmanager]}=$2/alertmanager" "$2/go.mod"
  echo "-modfile=$2/go.mod"
}

for c in "${components[@]}"; do
  [[ -n "${module[$c]:-}" ]] || { echo "build.sh: unknown component '$c'" >&2; exit 2; }
  v=$(version_of "$c")
  [[ -n "$v" ]] || { echo "build.sh: no pinned version of ${module[$c]} in $here/$c/go.mod" >&2; exit 1; }
  out="$cache_root/$c-$v"
  if (( print_dir )); then echo "$out"; continue; fi
  missing=0
  for b in ${binaries[$c]}; do [[ -x "$out/$b" ]] || missing=1; done
  if (( ! missing )); then
    echo "build.sh: $c $v already built in $out"
    continue
  fi
  echo "build.sh: building $c $v into $out (cold builds take minutes; kube-apiserver 10-20 min on 2 cores)"
  start=$(date +%s)
  mkdir -p "$out.tmp"
  pkgs=(${packages[$c]})
  bins=(${binaries[$c]})
  ldflags="-s -w"
  # The node's binaries report their version (the kubelet's Node status, kubectl get nodes): without
  # this they say v0.0.0-master+$Format:%H$.
  if [[ $c == node ]]; then
    IFS=. read -r major minor _ <<<"${v#v}"
    ldflags+=" -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=$major"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  fi
  # `registry --version` and `cosign version` likewise report the pinned version, not a placeholder.
  if [[ $c == registry ]]; then ldflags+=" -X github.com/distribution/distribution/v3/version.version=$v"; fi
  # velero's plugin directory is velero-plugin-aws-<version>/ itself: the server runs every executable in it.
  if [[ $c == velero ]]; then ldflags+=" -X github.com/vmware-tanzu/velero/pkg/buildinfo.Version=$v"; fi
  if [[ $c == cosign ]]; then
    ldflags+=" -X sigs.k8s.io/release-utils/version.gitVersion=$v -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
  fi
  modfile=()
  if [[ $c == alertmanager ]]; then
    work=$(mktemp -d)
    modfile=("$(alertmanager_modfile "$v" "$work")") || exit 1
  fi
  for i in "${!pkgs[@]}"; do
    echo "build.sh:   go build ${pkgs[$i]} -> ${bins[$i]}"
    (cd "$here/$c" && go build "${modfile[@]}" -trimpath -ldflags="$ldflags" -o "$out.tmp/${bins[$i]}" "${pkgs[$i]}")
  done
  [[ -z "${work:-}" ]] || { rm -rf "$work"; work=; }
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "build.sh: built $c $v in $(( $(date +%s) - start )) s"
done
