# gradserve server image: `docker run -p 50051:50051 --shm-size=1g gradserve`
# (/dev/shm carries large tensors to the workers; the default 64 MB is too small for big requests,
# which then fall back to the slower pipe).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && useradd --system --create-home --uid 10001 gradserve

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY engine ./engine
COPY client ./client
COPY server ./server
RUN pip install --no-cache-dir . && rm -rf /src

USER gradserve
WORKDIR /home/gradserve
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["gradserve", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["gradserve", "serve"]
CMD ["--host", "[::]", "--port", "50051"]
