# Airflow with this provider installed (the image's own Airflow version is kept).
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11
ARG AIRFLOW_VERSION
COPY --chown=airflow:0 pyproject.toml README.md /opt/pgcloud/
COPY --chown=airflow:0 airflow_provider_pgcloud /opt/pgcloud/airflow_provider_pgcloud
RUN pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" "/opt/pgcloud[airflow-azure,airflow-google]"
