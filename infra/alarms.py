"""WAL protection as code: CloudWatch alarms on the source's WAL and storage, sent to an SNS topic."""

from __future__ import annotations

from typing import Literal

import pulumi
import pulumi_aws as aws

from replicator.provision import wal


class WalAlarms(pulumi.ComponentResource):
    """One SNS topic (optionally with an e-mail subscription) and the alarms ``wal.alarm_specs`` lists.

    The thresholds come from the WAL budget in the stack config, which defaults to the replicator's
    ``log-monitoring`` numbers, so the alarms fire where the replicator warns and where it stops.
    """

    topic_arn: pulumi.Output[str]
    alarm_names: pulumi.Output[list[str]]

    def __init__(
        self,
        name: str,
        kind: Literal["instance", "cluster"],
        identifier: str,
        budget: wal.WalBudget,
        period_seconds: int = 300,
        email: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("replicator:source:WalAlarms", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        topic = aws.sns.Topic(f"{name}-topic", opts=child)
        if email:
            # AWS mails a confirmation link; nothing is delivered before someone clicks it.
            aws.sns.TopicSubscription(
                f"{name}-email", topic=topic.arn, protocol="email", endpoint=email, opts=child
            )
        self.alarms: list[aws.cloudwatch.MetricAlarm] = []
        for spec in wal.alarm_specs(kind, identifier, budget):
            self.alarms.append(
                aws.cloudwatch.MetricAlarm(
                    f"{name}-{spec.key}",
                    name=f"replicator-{identifier}-{spec.key}",
                    alarm_description=spec.description,
                    namespace="AWS/RDS",
                    metric_name=spec.metric,
                    dimensions=spec.dimensions,
                    statistic=spec.statistic,
                    period=period_seconds,
                    evaluation_periods=1,
                    comparison_operator=spec.comparison,
                    threshold=spec.threshold,
                    # No data (a stopped instance, a metric not yet published) is not an emergency in itself.
                    treat_missing_data="notBreaching",
                    alarm_actions=[topic.arn],
                    ok_actions=[topic.arn],
                    opts=child,
                )
            )
        self.topic_arn = topic.arn
        self.alarm_names = pulumi.Output.all(*[a.name for a in self.alarms])
        self.register_outputs({"topic_arn": self.topic_arn, "alarm_names": self.alarm_names})
