# tunelab CUDA image: the GPU requirement set, the project, DVC; runs as a non-root user.
#
#   docker build -t tunelab .
#   docker run --gpus all -v "$PWD":/workspace -v hf:/cache/huggingface -v dvc:/cache/dvc \
#       tunelab dvc repro                       # or: tunelab dvc exp run -S train.alpaca.lora.r=32
#
# The clone is mounted at /workspace and its own src/ comes first on PYTHONPATH, so the
# code that runs is the clone's; the copy installed here provides the `tunelab` command.
# The Hugging Face cache and the DVC cache are volumes (/cache/huggingface, /cache/dvc).
# The build test (tests/test_docker.py) builds this file on a locally made Debian base
# with the CPU set swapped in:
#   --build-arg BASE_IMAGE=<local base> --build-arg REQUIREMENTS=requirements/cpu.txt
#   --build-arg CONSTRAINTS=requirements/cpu-lock.txt
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG REQUIREMENTS=requirements/gpu.txt
ARG CONSTRAINTS=
ARG USER_UID=1000

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    DVC_SYSTEM_CONFIG_DIR=/etc/tunelab/dvc \
    DVC_SITE_CACHE_DIR=/cache/dvc/site \
    DVC_NO_ANALYTICS=1 \
    PYTHONPATH=/workspace/src

# Python, a C compiler (Triton builds its launcher at run time), git (DVC needs it).
# Versions come from the base image's release; pinning them would tie the file to one base.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc g++ git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory '*'

# Extra CA certificates (docker/certs/*.crt, none in the repository) for builds behind a
# TLS-intercepting proxy; pip and requests then use the system store.
COPY docker/certs/ /usr/local/share/ca-certificates/tunelab/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# A non-root user (uid matching the usual first user of the host, so the mounted clone
# stays writable; override with --build-arg USER_UID or docker run --user).
RUN (userdel -r ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid "${USER_UID}" --shell /bin/bash tunelab \
    && mkdir -p /workspace /cache/huggingface /cache/dvc/site /etc/tunelab/dvc \
    && chown -R tunelab:tunelab /workspace /cache

# The pinned requirement set first (its layer is reused while only the code changes).
COPY requirements/ /opt/tunelab/requirements/
WORKDIR /opt/tunelab
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir -r "${REQUIREMENTS}" ${CONSTRAINTS:+-c "${CONSTRAINTS}"} \
    && pip check

# The project itself (no dependencies: the set above is the complete, pinned one).
COPY pyproject.toml README.md /opt/tunelab/
COPY src/ /opt/tunelab/src/
RUN pip install --no-cache-dir --no-deps /opt/tunelab \
    && dvc config --system cache.dir /cache/dvc \
    && dvc config --system core.analytics false

VOLUME ["/cache/huggingface", "/cache/dvc"]
USER ${USER_UID}
WORKDIR /workspace
CMD ["dvc", "repro"]
