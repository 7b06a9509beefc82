"""The phones' side of the server: streams, presence, dispatch and the message lifecycle.

hub.DeviceHub            the phones connected to this replica (one per process:
                         `DeviceHub.of(state)`); presence, watchdog, heartbeats
session.DeviceSession    one open stream: outgoing frame queue, pacing and in-flight state
connections              credentials and presence rows (`device.*` events)
reports.ReportWriter     status reports and inbound SMS, group-committed, then ReportAck
dispatcher.Dispatcher    hands due messages to phones (priority, age, pacing, least loaded)
assignment               the database side of a dispatch round (claims, simulated devices)
simulated.SimulatedPhone the built-in phone behind `zs_test_` keys
transitions              status transitions + outbox events + daily counts, in the caller's
                         transaction; `expire_overdue_messages` for the worker
"""

from zimsend.server.devicelink.hub import DeviceHub

__all__ = ["DeviceHub"]
