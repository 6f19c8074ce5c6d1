# gradserve server image: `docker run -p 50051:50051 --shm-size=1g gradserve`
# (/dev/shm carries large tensors to the workers; the default 64 MB is too small for big requests,
# which then fall back to the slower pipe). Settings are `gradserve serve` flags appended to the run
# command, or GRADSERVE_* variables: `-e GRADSERVE_PORT=6000` moves the server and its HEALTHCHECK.
#
# The onnx extra lets the server convert ONNX models sent to RegisterNetwork.
# Two stages: `build` installs the project and its dependencies into a virtual environment that has no
# pip of its own (a separate tool venv runs pip with --python); the final stage copies only that
# environment, so no pip, setuptools, build cache or source tree reaches the image.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/tools \
    && python3 -m venv --without-pip /opt/venv
# The build context is what .dockerignore lets through: the files `pip install` needs.
COPY . /src
RUN /opt/tools/bin/pip --python /opt/venv/bin/python install --no-cache-dir "/src[onnx]"


FROM python:3.11-slim

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="gradserve" \
      org.opencontainers.image.description="A gradient-computation service: MindSpore-style GradOperation over gRPC, backed by a NumPy autodiff engine." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    GRADSERVE_HOST=0.0.0.0 GRADSERVE_PORT=50051
RUN groupadd --system --gid 10001 gradserve \
    && useradd --system --create-home --uid 10001 --gid 10001 gradserve
COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/gradserve
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["gradserve", "health"]
ENTRYPOINT ["gradserve", "serve"]
