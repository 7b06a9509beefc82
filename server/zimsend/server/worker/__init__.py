"""The worker (`zimsend worker`): a trio process that talks to the server only through the
database (DESIGN "The worker").

    runner      `Worker`: the outbox loop (one transaction per cycle), one task per event,
                graceful stop
    outbox      claim / targets / record / finish: the storage side of delivery
    writelock   `PatientDatabase`: waits for SQLite's write lock without sleeping through it
    jobs        periodic jobs: message expiry, retention
    retention   what the 90-day retention deletes, and from when
    cli         the `zimsend worker` command

Several workers may run against one PostgreSQL (claims use `FOR UPDATE SKIP LOCKED` and
leases); on SQLite they take turns on the single writer.
"""

from .runner import Worker, WorkerOptions

__all__ = ["Worker", "WorkerOptions"]
