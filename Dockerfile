# One image for every Peek process; docker-compose.yml picks the command.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY ingest_api ingest_api
COPY stream_workers stream_workers
COPY sink sink
COPY infra infra
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1 OMP_THREAD_LIMIT=1
USER nobody
CMD ["peek", "api", "--host", "0.0.0.0", "--port", "8000"]
