#!/usr/bin/env bash
# Build (and optionally push) the cvat-argo container images.
#
#   REGISTRY=ghcr.io/cvat-argo TAG=0.1.0 PUSH=1 containers/build.sh [image-or-stage...]
#
# Images: base dataset pull train convert annotate (default: all of them).
# Stage names are accepted too: create-dataset, pull-base-model, pre-annotate.
# The base image is always built first (every other image takes its wheel);
# convert and annotate are built FROM train, so asking for them builds train.
#
# Environment:
#   REGISTRY            registry prefix (default ghcr.io/cvat-argo)
#   TAG                 image tag (default: version = "..." of [project] in pyproject.toml)
#   PUSH                1 to push each image right after it is built (default 0)
#   DOCKER              container CLI (default docker; podman works too)
#   DOCKER_BUILD_FLAGS  extra flags for every build, e.g. "--platform linux/amd64 --no-cache"
#   REVISION            source revision for the OCI label (default: git HEAD, else "unknown")
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname -- "${here}")"

die() {
  echo "build.sh: $*" >&2
  exit 1
}

package_version() {
  # The version line of the [project] table (not of any [tool.*] table).
  awk -F'"' '
    /^[[:space:]]*\[/ { in_project = ($0 ~ /^[[:space:]]*\[project\][[:space:]]*$/) }
    in_project && /^[[:space:]]*version[[:space:]]*=/ { print $2; exit }
  ' "${root}/pyproject.toml"
}

REGISTRY="${REGISTRY:-ghcr.io/cvat-argo}"
REGISTRY="${REGISTRY%/}"
PUSH="${PUSH:-0}"
DOCKER="${DOCKER:-docker}"
TAG="${TAG:-$(package_version)}"
[[ -n "${TAG}" ]] || die "TAG is empty and no version = \"...\" line was found in ${root}/pyproject.toml"
[[ "${TAG}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "TAG '${TAG}' is not a valid image tag"
[[ "${PUSH}" == 0 || "${PUSH}" == 1 ]] || die "PUSH must be 0 or 1, not '${PUSH}'"
if [[ -z "${REVISION:-}" ]]; then
  REVISION="$(git -C "${root}" rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)"
fi
read -r -a extra_flags <<<"${DOCKER_BUILD_FLAGS:-}"

all_images=(base dataset pull train convert annotate)

image_ref() {
  echo "${REGISTRY}/cvat-argo-$1:${TAG}"
}

# Which images to build: the arguments (image or stage names), or all.
# (Plain strings rather than an associative array: works with bash 3.2 on macOS.)
wanted=" base "
want() { [[ "${wanted}" == *" $1 "* ]] || wanted+="$1 "; }
wants() { [[ "${wanted}" == *" $1 "* ]]; }

if (($# == 0)); then
  for image in "${all_images[@]}"; do want "${image}"; done
fi
for arg in "$@"; do
  case "${arg}" in
    base | dataset | pull | train | convert | annotate) want "${arg}" ;;
    create-dataset) want dataset ;;
    pull-base-model | status) want pull ;;
    pre-annotate) want annotate ;;
    all) for image in "${all_images[@]}"; do want "${image}"; done ;;
    -h | --help)
      sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *) die "unknown image or stage '${arg}' (expected one of: ${all_images[*]} create-dataset pull-base-model pre-annotate all)" ;;
  esac
done
if wants convert || wants annotate; then
  want train
fi

build() {
  local image="$1" ref
  ref="$(image_ref "${image}")"
  local args=(
    build
    --file "${here}/${image}/Dockerfile"
    --tag "${ref}"
    --build-arg "VERSION=${TAG}"
    --build-arg "REVISION=${REVISION}"
  )
  case "${image}" in
    base) ;;
    convert | annotate) args+=(--build-arg "TRAIN_IMAGE=$(image_ref train)") ;;
    *) args+=(--build-arg "BASE_IMAGE=$(image_ref base)") ;;
  esac
  args+=(${extra_flags[@]+"${extra_flags[@]}"} "${root}")

  echo "==> ${ref}" >&2
  "${DOCKER}" "${args[@]}"
  if [[ "${PUSH}" == 1 ]]; then
    # Pushed at once, so that a builder that cannot see local images (buildx
    # with the docker-container driver) finds it for the images built FROM it.
    "${DOCKER}" push "${ref}"
  fi
}

built=()
for image in "${all_images[@]}"; do
  if wants "${image}"; then
    build "${image}"
    built+=("$(image_ref "${image}")")
  fi
done

if [[ "${PUSH}" == 1 ]]; then echo "Built and pushed:" >&2; else echo "Built (not pushed; PUSH=1 pushes):" >&2; fi
printf '  %s\n' "${built[@]}" >&2
