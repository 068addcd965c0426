#!/usr/bin/env bash
# Print the TensorFlow stack installed in this Python as pip constraints
# (name==version, one per line, sorted).
#
# The train and annotate images start from tensorflow/tensorflow:<version>-gpu,
# whose TensorFlow build, Keras, TensorBoard, ml-dtypes and (when present) the
# nvidia-* CUDA/cuDNN wheels were released and tested together. Installing the
# package with these lines as a pip constraints file lets pip resolve the rest
# of the [train] extra (tf-models-official and its long tail) normally, while
# any requirement that would replace one of these packages makes the build fail
# instead of silently swapping in another TensorFlow or CUDA build. numpy,
# protobuf and h5py are left free: TensorFlow's own metadata bounds them.
#
# Usage (inside an image build):
#   tf-stack.sh > /etc/cvat-argo/tf-constraints.txt      # before pip install
#   tf-stack.sh | diff -u /etc/cvat-argo/tf-constraints.txt -   # after: unchanged?
set -euo pipefail

installed="$(python -m pip list --format=freeze --disable-pip-version-check)"
stack="$(grep -iE '^(tensorflow|tensorboard|keras|ml[-_]dtypes|nvidia-[a-z0-9._-]+)==' <<<"${installed}" \
  | LC_ALL=C sort || true)"

if ! grep -qiE '^tensorflow==' <<<"${stack}"; then
  echo "tf-stack.sh: no 'tensorflow' distribution is installed in $(command -v python)" >&2
  exit 1
fi
printf '%s\n' "${stack}"
