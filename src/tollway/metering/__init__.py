"""Metering: the usage events the atomic step appends, the ledger they are drained into, and
the billing hooks delivered from it.

- `tollway.metering.entries`: the decoder of the stream entries the step scripts and the
  memory store append (their format and stream keys are `tollway.events`).
- `tollway.metering.embedded`: embedded mode (the memory store): a background thread that
  writes the queued entries to the ledger and delivers the hooks.
- `tollway.metering.streams` and `tollway.metering.drain`: ``tollway worker``, a consumer group
  over the streams, acknowledging only after the ledger's commit.
- `tollway.metering.ledger`: the system of record (SQLite, PostgreSQL), with the hooks' outbox.
- `tollway.metering.reconcile`: the store's counters against the ledger's totals.
- `tollway.metering.recorder`: ``tw.record(...)``, usage measured elsewhere.
- `tollway.metering.hooks`, `dispatch`, `hookevents`, `sinks`, `asyncsinks`, `delivery`,
  `deliverystate`, `retry`: the hook dispatchers (sync and asyncio, one logic), the messages
  they build, where they go, each message's delivery state and the retry schedule.
- `tollway.metering.cloudevents`: build, encode and decode CloudEvents (structured JSON mode,
  single events and batches); money always travels as strings.
- `tollway.metering.webhooks`: ``whsec_`` secrets, ``webhook-*`` headers, HMAC-SHA256
  signatures (several at once while a secret is rotated), and verification for receivers.
"""
