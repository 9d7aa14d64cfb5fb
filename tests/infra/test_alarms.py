"""WAL protection as code: the alarms' metrics, dimensions and thresholds, under mocks and in moto."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from replicator.config.connection import LogMonitoring
from replicator.provision import wal
from tests.conftest import AwsEndpoint
from tests.infra.conftest import BASE, RecordingMocks, run_program, unwrap
from tests.infra.test_database import AURORA, CLUSTER_LOOKUP

ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
GB = 1024**3


def alarms(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {r.inputs["metricName"]: r.inputs for r in mocks.of_type(ALARM)}


def test_rds_instance_alarms_at_the_replicator_numbers(mocks: RecordingMocks) -> None:
    out = run_program({**BASE, "allocatedStorageGb": 400}, mocks)
    found = alarms(mocks)
    assert set(found) == {"OldestReplicationSlotLag", "TransactionLogsDiskUsage", "FreeStorageSpace"}
    for a in found.values():
        assert a["namespace"] == "AWS/RDS" and a["dimensions"] == {"DBInstanceIdentifier": "orders-db"}
        assert a["alarmActions"] == a["okActions"] == [out["walAlarmTopicArn"]]
    # Defaults: the log-monitoring numbers (70% of 50 GB warns, 50 GB stops), 10% of the disk free.
    assert LogMonitoring.model_fields["alert_threshold_percent"].default == 70
    assert found["OldestReplicationSlotLag"]["threshold"] == 50 * GB * 70 // 100
    assert found["OldestReplicationSlotLag"]["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert found["TransactionLogsDiskUsage"]["threshold"] == 50 * GB
    assert found["FreeStorageSpace"]["threshold"] == 40 * GB
    assert found["FreeStorageSpace"]["comparisonOperator"] == "LessThanOrEqualToThreshold"
    assert found["FreeStorageSpace"]["statistic"] == "Minimum"
    assert out["walAlarmNames"] == [
        "replicator-orders-db-slot-lag",
        "replicator-orders-db-wal-disk",
        "replicator-orders-db-free-storage",
    ]
    assert mocks.of_type("aws:sns/topicSubscription:TopicSubscription") == []


def test_thresholds_and_email_from_stack_config(mocks: RecordingMocks) -> None:
    config = {
        **BASE,
        "walAlarms": {
            "maxWalSizeGb": 8,
            "alertThresholdPercent": 60,
            "freeStorageGb": 3,
            "email": "dba@example.com",
            "periodSeconds": 60,
        },
    }
    run_program(config, mocks)
    found = alarms(mocks)
    assert found["OldestReplicationSlotLag"]["threshold"] == 8 * GB * 60 // 100
    assert found["TransactionLogsDiskUsage"]["threshold"] == 8 * GB
    assert found["FreeStorageSpace"]["threshold"] == 3 * GB
    assert {a["period"] for a in found.values()} == {60}
    sub = mocks.one("aws:sns/topicSubscription:TopicSubscription").inputs
    assert (sub["protocol"], sub["endpoint"]) == ("email", "dba@example.com")


def test_aurora_alarms_follow_the_writer(mocks: RecordingMocks) -> None:
    run_program(AURORA, mocks)
    found = alarms(mocks)
    # Aurora PostgreSQL publishes no OldestReplicationSlotLag or FreeStorageSpace; its WAL metrics are
    # per instance, aggregated per cluster and role.
    assert set(found) == {"ReplicationSlotDiskUsage", "TransactionLogsDiskUsage", "FreeLocalStorage"}
    for a in found.values():
        assert a["dimensions"] == {"DBClusterIdentifier": "orders-aurora", "Role": "WRITER"}
    assert found["ReplicationSlotDiskUsage"]["threshold"] == 50 * GB * 70 // 100
    assert found["FreeLocalStorage"]["threshold"] == 10 * GB


def test_adopted_and_self_hosted(mocks: RecordingMocks) -> None:
    mocks.lookups = CLUSTER_LOOKUP
    run_program({**AURORA, "source": "adopt", "identifier": "legacy-aurora"}, mocks)
    assert {a["dimensions"]["DBClusterIdentifier"] for a in alarms(mocks).values()} == {"legacy-aurora"}
    hosted = RecordingMocks()
    out = run_program(
        {**BASE, "source": "self-hosted", "identifier": None, "host": "10.0.0.5", "allowlist": []}, hosted
    )
    assert hosted.of_type(ALARM) == [] and "walAlarmTopicArn" not in out  # no CloudWatch for it
    off = RecordingMocks()
    run_program({**BASE, "walAlarms": {"enabled": False}}, off)
    assert off.of_type(ALARM) == [] and off.of_type("aws:sns/topic:Topic") == []


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"walAlarms": {"alertThresholdPercent": 90}},
            r"walAlarms.alertThresholdPercent: input should be less",
        ),
        ({"walAlarms": {"email": "not-an-address"}}, r"not an e-mail address"),
        (
            {"walAlarms": {"maxWalSizeGb": 60}, "maxSlotWalKeepSizeGb": 50, "allocatedStorageGb": 500},
            r"maxSlotWalKeepSizeGb \(50\) is below walAlarms.maxWalSizeGb \(60\)",
        ),
        ({"maxSlotWalKeepSizeGb": 30}, r"maxSlotWalKeepSizeGb \(30\) is not below allocatedStorageGb \(20\)"),
        (
            {"engine": "aurora-postgresql", "engineVersion": "15.4", "maxSlotWalKeepSizeGb": 30},
            r"Aurora PostgreSQL does not document max_slot_wal_keep_size",
        ),
        ({"maxSlotWalKeepSizeGb": 0}, r"a number of GB above 0, or -1"),
    ],
)
def test_wal_settings_that_cannot_work_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        run_program({**BASE, **changes}, RecordingMocks())


class AlarmsInMoto(RecordingMocks):
    """Creates the SNS topic, subscription and alarms in moto from the program's inputs, like the engine."""

    def __init__(self, aws: AwsEndpoint) -> None:
        super().__init__()
        self.aws = aws
        self.on_resource = self._create

    def _create(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]] | None:
        i = unwrap(dict(args.inputs))
        if args.typ == "aws:sns/topic:Topic":
            arn = self.aws.client("sns").create_topic(Name=args.name)["TopicArn"]
            return arn, {**i, "arn": arn}
        if args.typ == "aws:sns/topicSubscription:TopicSubscription":
            sub = self.aws.client("sns").subscribe(
                TopicArn=i["topic"], Protocol=i["protocol"], Endpoint=i["endpoint"]
            )
            return sub["SubscriptionArn"], i
        if args.typ == ALARM:
            self.aws.client("cloudwatch").put_metric_alarm(
                AlarmName=i["name"],
                AlarmDescription=i["alarmDescription"],
                Namespace=i["namespace"],
                MetricName=i["metricName"],
                Dimensions=[{"Name": k, "Value": v} for k, v in i["dimensions"].items()],
                Statistic=i["statistic"],
                Period=int(i["period"]),
                EvaluationPeriods=int(i["evaluationPeriods"]),
                ComparisonOperator=i["comparisonOperator"],
                Threshold=float(i["threshold"]),
                TreatMissingData=i["treatMissingData"],
                AlarmActions=i["alarmActions"],
                OKActions=i["okActions"],
            )
            return i["name"], i
        return None


@pytest.mark.parametrize("engine", ["postgres", "aurora-postgresql"])
def test_alarms_exist_in_moto(aws: AwsEndpoint, engine: str) -> None:
    config = {
        **(AURORA if engine == "aurora-postgresql" else BASE),
        "allocatedStorageGb": 400,
        "walAlarms": {"email": "dba@example.com"},
    }
    out = run_program(config, AlarmsInMoto(aws))
    identifier = config["identifier"]
    budget = wal.default_budget(400 if engine == "postgres" else None, None, None, None)
    expected = wal.alarm_specs("instance" if engine == "postgres" else "cluster", identifier, budget)
    found = {a["AlarmName"]: a for a in aws.client("cloudwatch").describe_alarms()["MetricAlarms"]}
    assert (
        sorted(found)
        == sorted(out["walAlarmNames"])
        == sorted(f"replicator-{identifier}-{s.key}" for s in expected)
    )
    for spec in expected:
        alarm = found[f"replicator-{identifier}-{spec.key}"]
        assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
            "AWS/RDS",
            spec.metric,
            spec.statistic,
        )
        assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == spec.dimensions
        assert (alarm["ComparisonOperator"], alarm["Threshold"]) == (spec.comparison, float(spec.threshold))
        assert alarm["AlarmActions"] == [out["walAlarmTopicArn"]]
    subs = aws.client("sns").list_subscriptions_by_topic(TopicArn=out["walAlarmTopicArn"])["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("email", "dba@example.com")]
    if engine == "postgres":
        assert found[f"replicator-{identifier}-slot-lag"]["Threshold"] == 35 * GB
