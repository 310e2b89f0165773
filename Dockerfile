# medcl GPU image: contrastive pretraining, downstream tasks, calibration and reports.
#
#   docker build -t medcl:0.1.0 .                         # the runtime image (default target)
#   docker build --target test -t medcl:0.1.0-test .      # plus the dev tools and the test suite
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.1-cudnn9-runtime -t medcl:0.1.0-cu121 .
#   docker run --rm --gpus all -v /srv/data:/data:ro -v /srv/medcl-runs:/runs medcl:0.1.0 \
#       run /opt/medcl/pipelines/oct_severity.yaml --set data.manifest=/data/oct/manifest.csv
#
# Stages: deps (runtime dependencies only) -> wheel (builds medcl's wheel, which carries the pipelines,
# presets and report notebook) -> runtime (deps + the wheel: no compiler, no dev or test tools, no tests);
# test (deps + `pip install -e '.[dev]'` as `make install` + the test suite) is built only on request.
# docs/deploy.md explains every stage, volume and environment variable, torchrun and SLURM.
# The base image brings CUDA, cuDNN, Python and PyTorch; pick the CUDA build that matches the
# server's driver. Nothing secret is baked in: credentials come from the environment at run time.

ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# ------------------------------------------------------------------ deps: runtime dependencies only
FROM ${BASE_IMAGE} AS deps

# HF_HUB_OFFLINE: timm never downloads weights (pretrained weights come from local files only).
# MLFLOW_TRACKING_URI: the default store lives on the /runs volume; compose points it at the server.
# MEDCL_PIPELINES: the pipelines shipped with the image (`medcl demo`, `medcl run /opt/medcl/pipelines/...`).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    MLFLOW_ENABLE_ASYNC_LOGGING=false \
    MLFLOW_TRACKING_URI=sqlite:////runs/mlflow.db \
    MEDCL_PIPELINES=/opt/medcl/pipelines \
    MPLCONFIGDIR=/tmp/matplotlib

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /opt/medcl

# From pyproject.toml and an empty package, so this layer is rebuilt only when the dependencies change.
# The constraints file pins the base image's torch/torchvision so pip never swaps its CUDA build; the
# empty package itself is uninstalled again.
COPY pyproject.toml README.md ./
RUN mkdir -p medcl \
    && touch medcl/__init__.py \
    && python -c "import torch, torchvision as tv; print('torch==' + torch.__version__.split('+')[0]); print('torchvision==' + tv.__version__.split('+')[0])" > /opt/torch-constraints.txt \
    && python -m pip install --no-cache-dir -c /opt/torch-constraints.txt . \
    && python -m pip uninstall --yes medcl \
    && rm -rf medcl build ./*.egg-info

# ------------------------------------------------------------------ wheel: medcl with its shipped files
FROM deps AS wheel
COPY setup.py MANIFEST.in ./
COPY medcl ./medcl
COPY pipelines ./pipelines
COPY configs ./configs
COPY notebooks ./notebooks
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /opt/wheels .

# ------------------------------------------------------------------ test: `docker build --target test`
FROM deps AS test
# Same command as the Makefile's install (tests/deploy checks it): dependencies first, then the source.
RUN mkdir -p medcl \
    && touch medcl/__init__.py \
    && python -m pip install --no-cache-dir -c /opt/torch-constraints.txt -e '.[dev]' \
    && rm -rf medcl
COPY setup.py MANIFEST.in Makefile ./
COPY medcl ./medcl
COPY pipelines ./pipelines
COPY configs ./configs
COPY notebooks ./notebooks
COPY benchmarks ./benchmarks
COPY tests ./tests
RUN python -m pip install --no-cache-dir --no-deps -e '.[dev]' \
    && python -c "import medcl.cli"
ENTRYPOINT ["python", "-m", "pytest"]
CMD ["-q", "-m", "not slow and not integration", "-p", "no:cacheprovider", "--ignore=tests/report"]

# ------------------------------------------------------------------ runtime (the default target)
FROM deps AS runtime
ARG MEDCL_UID=1000
ARG MEDCL_GID=1000
# /opt/medcl/pipelines and /opt/medcl/configs: the shipped pipelines and presets (also inside the package),
# for `medcl run /opt/medcl/pipelines/...` and `include: /opt/medcl/configs/...` in your own pipelines.
COPY --from=wheel /opt/wheels /tmp/wheels
COPY pipelines ./pipelines
COPY configs ./configs
RUN python -m pip install --no-cache-dir --no-deps /tmp/wheels/medcl-0.1.0-py3-none-any.whl \
    && rm -rf /tmp/wheels \
    && python -c "import medcl.cli, medcl.shipped as s; s.shipped('notebooks', must_have='report.ipynb')"

# Non-root user; /data (read-only inputs) and /runs (run folders, default MLflow store) are volumes.
RUN groupadd --gid "${MEDCL_GID}" medcl \
    && useradd --uid "${MEDCL_UID}" --gid "${MEDCL_GID}" --create-home --shell /bin/bash medcl \
    && mkdir -p /data /runs \
    && chown medcl:medcl /runs
USER ${MEDCL_UID}:${MEDCL_GID}
WORKDIR /runs
VOLUME ["/data", "/runs"]

ENTRYPOINT ["medcl"]
CMD ["--help"]
