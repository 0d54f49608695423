# The Prefect worker of compose.gpu.yaml: this project installed on Python 3.11, so the
# worker can run flows/process_incoming.py and the `mammo` command.
# Build from the repository root: docker build -f serving/worker.Dockerfile .
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY mammo mammo
COPY flows flows
COPY tasks tasks
COPY models models
COPY serving serving
COPY db db
COPY deployments deployments
RUN pip install --no-cache-dir .

ENV PREFECT_HOME=/data/prefect \
    KERAS_HOME=/data/keras \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

CMD ["prefect", "worker", "start", "--pool", "mammo", "--type", "process"]
