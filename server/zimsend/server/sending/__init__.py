"""Accepting SMS and answering questions about them: the logic behind `SmsService`.

The gRPC servicer (`zimsend.server.services.sms`) stays thin; each concern lives here in its
own module, all of them synchronous (run through `ServerState.db_call`):

- `dates`       — RFC 3339 timestamps and bare `YYYY-MM-DD` days, as requests give them.
- `fields`      — one check per request field (phone number, text, priority, metadata, …).
- `validation`  — whole send/bulk requests: every violation collected into one error.
- `idempotency` — the `Idempotency-Key` contract: canonical hash, replay, reuse detection.
- `intake`      — availability checks, estimated delivery, and the one transaction that
                  queues a request's messages together with its idempotency record.
- `one_message` — status, cancel and resend of one message by id.
- `history`     — history pages, the streamed export, the inbound inbox.
- `stats`       — per-day counts from messages (inside retention) and aggregates (older).
- `views`       — storage rows as protobuf messages (status, history entry, export rows).

The dispatcher (another package) takes `queued` rows from here and moves them along; this
package only creates, cancels, re-queues and reads them.
"""
