# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   target rlsweep: what the Ray head and workers run: rlsweep and its dependencies, torch for the CPU
#                   (a GPU node: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124),
#                   MuJoCo/Box2D with --build-arg EXTRAS=all (or mujoco, box2d)
#   target mlflow:  the MLflow tracking server with the PostgreSQL driver and boto3 for the S3 artifact store
# Everything is installed at build time: containers start offline and at once.

FROM python:3.11-slim AS mlflow
ARG MLFLOW_VERSION=3.17.2
RUN pip install --no-cache-dir "mlflow[auth]==${MLFLOW_VERSION}" psycopg2-binary boto3
RUN useradd --create-home mlflow && mkdir /mlflow-auth && chown mlflow /mlflow-auth
USER mlflow
# the basic-auth switch keeps its user store here (a volume)
WORKDIR /mlflow-auth
EXPOSE 5000

FROM python:3.11-slim AS rlsweep
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
RUN pip install --no-cache-dir torch --index-url "${TORCH_INDEX}"
WORKDIR /rlsweep
COPY pyproject.toml README.md ./
COPY platform ./platform
RUN pip install --no-cache-dir ".${EXTRAS:+[${EXTRAS}]}"
COPY experiments ./experiments
COPY search_spaces ./search_spaces
RUN useradd --create-home rlsweep && mkdir -p results /home/rlsweep/.config/rlsweep \
    && chown -R rlsweep results /home/rlsweep/.config
USER rlsweep
