"""Durable history: topics configured ``durable: True`` keep their offsets, epoch and history in
the Django database, so they survive a restart of every process. See
:mod:`megaphone.backends.durable`."""

from __future__ import annotations

from django.db import models


class DurableTopic(models.Model):
    """A durable topic's position: its epoch (fixed for the topic's life) and latest offset."""

    name = models.CharField(max_length=200, primary_key=True)
    epoch = models.CharField(max_length=32)
    offset = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.name}#{self.offset} ({self.epoch})"


class DurableMessage(models.Model):
    """One message of a durable topic. ``text`` holds a text payload, ``data`` a binary one."""

    topic = models.CharField(max_length=200)
    offset = models.BigIntegerField()
    text = models.TextField(null=True, blank=True)
    data = models.BinaryField(null=True, blank=True)
    json = models.BooleanField(default=False)
    msg_id = models.CharField(max_length=64, null=True, blank=True)
    time = models.FloatField()

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=["topic", "offset"], name="megaphone_topic_offset"),
            models.UniqueConstraint(
                fields=["topic", "msg_id"],
                condition=models.Q(msg_id__isnull=False),
                name="megaphone_topic_msg_id",
            ),
        )

    def __str__(self) -> str:
        return f"{self.topic}#{self.offset}"


class PendingMessage(models.Model):
    """A message published inside a transaction (the transactional outbox): written in that
    transaction, relayed to the backend after it commits, then deleted. A row left behind (the
    process died between the commit and the relay, the backend was down) is relayed by the
    workers. See :mod:`megaphone.backends.transactional`."""

    topic = models.CharField(max_length=200)
    text = models.TextField(null=True, blank=True)
    data = models.BinaryField(null=True, blank=True)
    json = models.BooleanField(default=False)
    #: Always set: the relay is idempotent through it, whoever relays and however often.
    msg_id = models.CharField(max_length=64)
    created = models.FloatField(db_index=True)

    def __str__(self) -> str:
        return f"{self.topic} ({self.msg_id})"
