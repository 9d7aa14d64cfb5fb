#!/bin/bash
# Runs inside LocalStack once it is ready: print the default VPC, its subnets and default security group,
# the ids a stack config needs (replicator:vpcId, replicator:subnetIds, replicator:securityGroupIds).
set -eu
vpc=$(awslocal ec2 describe-vpcs --filters Name=is-default,Values=true --query 'Vpcs[0].VpcId' --output text)
if [ -z "$vpc" ] || [ "$vpc" = "None" ]; then
  vpc=$(awslocal ec2 create-default-vpc --query 'Vpc.VpcId' --output text)
fi
subnets=$(awslocal ec2 describe-subnets --filters "Name=vpc-id,Values=$vpc" --query 'Subnets[].SubnetId' --output text)
group=$(awslocal ec2 describe-security-groups --filters "Name=vpc-id,Values=$vpc" Name=group-name,Values=default \
  --query 'SecurityGroups[0].GroupId' --output text)
echo "replicator: default VPC $vpc, subnets: $subnets, default security group: $group"
