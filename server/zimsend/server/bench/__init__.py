"""`zimsend bench`: the server measured against its own ceiling, on loopback.

Every number is also reported as a ratio to a baseline measured in the same run (a trivial
grpc.aio handler, the gRPC send path, the sustainable end-to-end rate), because the machines
this runs on are small and shared: absolute numbers move with the neighbours, ratios much less.
See docs/benchmarks.md for the scenarios, the latest full run, and what limits each number.
"""
