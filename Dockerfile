# gradserve server image: `docker run -p 50051:50051 --shm-size=1g gradserve`
# (/dev/shm carries large tensors to the workers; the default 64 MB is too small for big requests,
# which then fall back to the slower pipe). Settings are `gradserve serve` flags appended to the run
# command, or GRADSERVE_* variables: `-e GRADSERVE_PORT=6000` moves the server and its HEALTHCHECK.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    GRADSERVE_HOST=0.0.0.0 GRADSERVE_PORT=50051
RUN python3 -m venv /opt/venv \
    && groupadd --system --gid 10001 gradserve \
    && useradd --system --create-home --uid 10001 --gid 10001 gradserve

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY engine ./engine
COPY client ./client
COPY server ./server
RUN pip install --no-cache-dir . && rm -rf /src

USER 10001:10001
WORKDIR /home/gradserve
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["gradserve", "health"]
ENTRYPOINT ["gradserve", "serve"]
