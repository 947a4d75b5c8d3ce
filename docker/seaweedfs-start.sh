#!/bin/sh
# Start SeaweedFS with S3 credentials taken from the environment (S3_ACCESS_KEY,
# S3_SECRET_KEY): without an identity file SeaweedFS would accept any request.
set -eu
umask 077
cat > /tmp/s3-identities.json <<JSON
{"identities": [{"name": "pgcloud",
  "credentials": [{"accessKey": "${S3_ACCESS_KEY}", "secretKey": "${S3_SECRET_KEY}"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
exec weed server -dir=/data -ip.bind=0.0.0.0 -master.volumeSizeLimitMB=1024 \
    -s3 -s3.port=8333 -s3.config=/tmp/s3-identities.json
