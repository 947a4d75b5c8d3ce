# PostgreSQL with Barman's cloud commands, so archive_command can push WAL to the S3 store
# (barman-cloud-wal-archive); backups then restore with barman-cloud-restore + WAL replay.
# The official image already has the PostgreSQL apt repository, which ships barman-cli-cloud.
ARG POSTGRES_VERSION=16
FROM postgres:${POSTGRES_VERSION}-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends barman-cli-cloud python3-boto3 \
    && rm -rf /var/lib/apt/lists/*
