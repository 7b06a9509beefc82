"""The ZimSend server: the gRPC API, the phones' streams and the worker, over one storage layer.

Processes (one way to start each: `zimsend serve`, `zimsend worker`, `zimsend up` for all)
    app                  the gRPC server process: services, health, reflection, graceful stop
    worker/              the trio worker: webhook delivery, expiry, retention
    up                   `zimsend up`: server, worker and Envoy in one command
    cli                  `zimsend serve` and `zimsend admin …`
    bench/               `zimsend bench`: the server measured against its own ceiling
    processes            the one way to start a process: `spawn`, `signal_group`, `Program`

A public call, outside in
    call_gate            refuses new calls while stopping, counts the ones in flight
    request_decoding     undecodable requests answer INVALID_ARGUMENT
    metrics              Prometheus metrics (an interceptor, and gauges read at scrape time)
    method_handlers      the interceptors' one trick: a handler with a behaviour replaced
    services/            the zimsend.v1 servicers, one module per service, registered in one list
    rpc                  `public_rpc`: authenticate, rate-limit, run, map errors
    auth                 API key + client id -> `Caller`; verified_keys caches them for a second
    ratelimit            the per-client request limit (SPEC §8)
    errors               `ApiError`, the one way a failure reaches a caller (SPEC §10)
    state                `ServerState`, what every service of a process shares

The domain
    sending/             accepting SMS (the accept lane), history, stats, cancel and resend
    otp/                 one-time passwords
    devicelink/          the phones: streams, presence, dispatch, reports, the message lifecycle
    compliance/          opt-outs and client policy (quiet hours, keywords)
    webhook_delivery/    what an event looks like on the wire and how it gets there
    webhook_endpoints    the WebhookService's database operations (configure, logs, redeliver)
    failures             the failure codes of failures.proto
    presence             whether a device is online

Underneath
    storage/             SQLModel tables, migrations, the atomic primitives (SQLite, PostgreSQL)
    accounts/            clients, API keys, device credentials, the pepper-keyed hashing and
                         encryption of secrets, the verified-keys cache
    config               settings (environment, config file, generated pepper)
    logs                 structured logs
    local_postgres       a private PostgreSQL for `zimsend up --postgres`

Nothing is imported here: each process imports what it runs.
"""
