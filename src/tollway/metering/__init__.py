"""Metering: usage events as CloudEvents 1.0 envelopes, signed Standard Webhooks, delivery.

- `tollway.metering.cloudevents`: build, encode and decode CloudEvents (structured JSON mode,
  single events and batches); money always travels as strings.
- `tollway.metering.webhooks`: ``whsec_`` secrets, ``webhook-*`` headers, HMAC-SHA256
  signatures (several at once while a secret is rotated), and verification for receivers.
- `tollway.metering.delivery`: at-least-once delivery of an event or a batch to one sink, on a
  retry schedule, resumable from a JSON-serializable `DeliveryState`, dead-lettered at the end.
"""
