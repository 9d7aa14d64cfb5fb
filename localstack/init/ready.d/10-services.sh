#!/bin/bash
# Runs inside LocalStack once it is ready: say which of the services the replicator needs answer.
set -u
missing=0
probe() {  # service name, then a cheap read-only call
  local service=$1; shift
  if "$@" >/dev/null 2>&1; then
    echo "replicator: $service available"
  else
    echo "replicator: $service NOT available"
    return 1
  fi
}
probe ec2 awslocal ec2 describe-vpcs || missing=1
probe secretsmanager awslocal secretsmanager list-secrets || missing=1
probe sts awslocal sts get-caller-identity || missing=1
if ! probe rds awslocal rds describe-db-instances; then
  echo "replicator: rds is a LocalStack Pro service: use source: self-hosted (Pulumi.localstack.yaml) or set LOCALSTACK_AUTH_TOKEN"
fi
if [ "$missing" -ne 0 ]; then
  echo "replicator: a required service is missing: check SERVICES in localstack/docker-compose.yml"
fi
