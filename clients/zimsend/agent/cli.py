"""`zimsend device run` (one phone, trio) and `zimsend device fleet` (many phones, asyncio).

Credentials come from `--pairing URI` or from `--server/--client-id/--device-id/--password`
(explicit flags win over the URI). The password may also come from the environment
(`ZIMSEND_DEVICE_PASSWORD`), which keeps it out of `ps`. It is never logged.

Exit codes: 0 on a clean stop (SIGTERM), 2 on bad arguments, 3 when the server refuses the
credentials, 4 when the server says stop (device deleted or disabled, password rotated, or
replaced by another agent using the same pairing), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

log = logging.getLogger("zimsend.agent")


def default_state_dir() -> Path:
    """Where journals live by default: $ZIMSEND_STATE_DIR, else $XDG_STATE_HOME/zimsend,
    else ~/.local/state/zimsend."""
    if env := os.environ.get("ZIMSEND_STATE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "zimsend"


def register(commands: Any) -> None:
    """Add `device` with its `run` and `fleet` sub-commands to the `zimsend` parser."""
    device = commands.add_parser("device", help="run a phone agent (or a simulated fleet)")
    sub = device.add_subparsers(dest="device_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="connect one device and send what the server asks")
    conn = run.add_argument_group("connection")
    conn.add_argument("--pairing", metavar="URI", help="zimsend://pair?... from 'add device'")
    conn.add_argument("--server", metavar="HOST:PORT")
    conn.add_argument("--client-id")
    conn.add_argument("--device-id")
    conn.add_argument("--password", help="device password (or $ZIMSEND_DEVICE_PASSWORD)")
    conn.add_argument("--tls", action="store_true", default=None, help="connect with TLS")
    conn.add_argument("--ca-file", type=Path, help="PEM roots for --tls (default: system)")
    run.add_argument("--journal", type=Path, help="journal file (default: state dir)")
    run.add_argument(
        "--backend",
        choices=["simulator", "modem", "termux"],
        default="simulator",
        help="what sends the SMS: the simulator, a GSM modem through Gammu,"
        " or this Android phone through Termux:API",
    )
    _add_simulator_flags(run)
    _add_termux_flags(run)
    modem = run.add_argument_group("modem backend (Gammu; pip install 'zimsend-client[modem]')")
    modem.add_argument(
        "--gammu-config",
        type=Path,
        metavar="FILE",
        help="gammurc naming the modem (device, connection, model)",
    )
    modem.add_argument(
        "--gammu-section",
        type=int,
        default=0,
        metavar="N",
        help="section of the gammurc: 0 is [gammu], N is [gammuN]",
    )
    modem.add_argument("--sim-pin", help="SIM PIN (or $ZIMSEND_SIM_PIN); never logged")
    modem.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="how often the modem's storage is read (reports, inbound SMS)",
    )
    run.add_argument(
        "--inject-inbound",
        type=int,
        default=0,
        metavar="N",
        help="simulator: receive N inbound SMS, one every --inject-interval",
    )
    run.add_argument("--inject-interval", type=float, default=5.0, metavar="S")
    run.add_argument(
        "--give-back-after",
        type=float,
        default=None,
        metavar="S",
        help="give the commands held back to the server (failed before sending,"
        " so another phone sends them) after the phone could not send for S"
        " seconds (default: 45)",
    )
    run.add_argument("--log-level", default="INFO")
    run.set_defaults(handler=_run_handler)

    fleet = sub.add_parser("fleet", help="simulate many phones in one process (load, tests)")
    fleet.add_argument("--server", metavar="HOST:PORT", required=True)
    fleet.add_argument(
        "--devices-file",
        type=Path,
        required=True,
        help="JSON list of {client_id, device_id, password}",
    )
    fleet.add_argument("--tls", action="store_true")
    fleet.add_argument("--ca-file", type=Path)
    fleet.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="streams opened per batch (thousands at once fail)",
    )
    fleet.add_argument("--batch-interval", type=float, default=1.0, metavar="S")
    fleet.add_argument("--status-interval", type=float, default=5.0, metavar="S")
    fleet.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="stop after S seconds (0: run until Ctrl-C)",
    )
    _add_simulator_flags(fleet)
    fleet.add_argument("--log-level", default="WARNING")
    fleet.set_defaults(handler=_fleet_handler)


def _add_simulator_flags(parser: argparse.ArgumentParser) -> None:
    sim = parser.add_argument_group("simulator backend")
    sim.add_argument("--outbox", type=Path, help="append every simulated SMS as a JSON line")
    sim.add_argument("--seed", type=int, help="make every simulated outcome reproducible")
    sim.add_argument("--send-delay", type=float, default=0.2, metavar="S")
    sim.add_argument(
        "--delivery-delay",
        type=float,
        default=1.0,
        metavar="S",
        help="delay of handset delivery reports; negative: never delivered",
    )
    sim.add_argument("--failure-rate", type=float, default=0.0, metavar="F")
    sim.add_argument(
        "--health-file",
        type=Path,
        metavar="FILE",
        help="while FILE holds a before-send code (NO_SERVICE, RADIO_OFF,"
        " SIM_MISSING, SIM_PIN_REQUIRED), the phone says it cannot send",
    )
    sim.add_argument(
        "--failure-codes",
        default="",
        metavar="CODE,...",
        help="FailureCode names drawn for failures (failures.proto), e.g. "
        "NO_SERVICE (before the SMS left: the server re-routes it) or TIMEOUT "
        "(ambiguous); default: SPEC §7's phone codes",
    )


def _add_termux_flags(parser: argparse.ArgumentParser) -> None:
    termux = parser.add_argument_group("termux backend (Android, Termux:API)")
    termux.add_argument(
        "--sim-slot",
        type=int,
        metavar="N",
        help="SIM slot to send from, counted from 0 (default: the phone's default)",
    )
    termux.add_argument(
        "--sms-poll-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="how often to read the phone's SMS inbox",
    )


def termux_sender(args: argparse.Namespace) -> Any:
    """The `--backend termux` sender (docs/phones.md)."""
    from zimsend.agent.senders.termux import TermuxSender

    if args.sim_slot is not None and args.sim_slot < 0:
        _usage_error("--sim-slot counts from 0")
    return TermuxSender(sim_slot=args.sim_slot, poll_interval=max(0.5, args.sms_poll_interval))


def simulation_config(args: argparse.Namespace) -> Any:
    from zimsend.agent.simulation import DEFAULT_FAILURE_CODES, SimulationConfig

    codes = tuple(c.strip().upper() for c in args.failure_codes.split(",") if c.strip())
    return SimulationConfig(
        seed=args.seed,
        send_delay=max(0.0, args.send_delay),
        delivery_delay=None if args.delivery_delay < 0 else args.delivery_delay,
        failure_rate=min(1.0, max(0.0, args.failure_rate)),
        failure_codes=codes or DEFAULT_FAILURE_CODES,
        outbox=args.outbox,
        health_file=args.health_file,
    )


def modem_sender(args: argparse.Namespace) -> Any:
    """The Gammu sender, or SystemExit(2) saying what is missing."""
    if args.gammu_config is None:
        _usage_error("--backend modem needs --gammu-config FILE (a gammurc naming the modem)")
    if not args.gammu_config.is_file():
        _usage_error(f"--gammu-config {args.gammu_config} is not a readable file")
    try:
        import gammu  # noqa: F401 - only probes that python-gammu is installed
    except ImportError:
        _usage_error("--backend modem needs python-gammu: pip install 'zimsend-client[modem]'")
    from zimsend.agent.senders.modem import ModemConfig, ModemSender

    pin = args.sim_pin or os.environ.get("ZIMSEND_SIM_PIN") or None
    return ModemSender(
        ModemConfig(
            gammurc=args.gammu_config,
            section=args.gammu_section,
            pin=pin,
            poll_interval=max(0.2, args.poll_interval),
        )
    )


def agent_config(args: argparse.Namespace) -> Any:
    """Merge --pairing and the explicit flags; SystemExit(2) naming what is missing."""
    from zimsend.agent.agent import AgentConfig
    from zimsend.agent.pairing import PairingError, parse_pairing_uri

    values: dict[str, Any] = {
        "server": None,
        "client_id": None,
        "device_id": None,
        "password": None,
        "tls": False,
    }
    if args.pairing:
        try:
            info = parse_pairing_uri(args.pairing)
        except PairingError as exc:
            _usage_error(str(exc))
        values.update(
            server=info.server,
            client_id=info.client_id,
            device_id=info.device_id,
            password=info.password,
            tls=info.tls,
        )
    for name in ("server", "client_id", "device_id", "password", "tls"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    values["password"] = values["password"] or os.environ.get("ZIMSEND_DEVICE_PASSWORD")
    missing = [
        f"--{n.replace('_', '-')}"
        for n in ("server", "client_id", "device_id", "password")
        if not values[n]
    ]
    if missing:
        _usage_error(f"missing {', '.join(missing)} (or give --pairing URI)")
    if ":" not in values["server"].rsplit("]", 1)[-1]:
        _usage_error(f"--server {values['server']!r} needs a port (HOST:PORT)")
    if args.ca_file is not None and not args.ca_file.is_file():
        _usage_error(f"--ca-file {args.ca_file} is not a readable file")
    journal = args.journal or default_state_dir() / f"journal-{values['device_id']}.sqlite3"
    if args.give_back_after is not None:
        if args.give_back_after < 0:
            _usage_error("--give-back-after must be 0 or more seconds")
        values["give_back_after"] = args.give_back_after
    return AgentConfig(journal=journal, ca_file=args.ca_file, **values)


def _usage_error(message: str) -> None:
    print(f"zimsend device: {message}", file=sys.stderr)
    raise SystemExit(2)


def _setup_logging(level: str, prefix: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s {prefix} %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _run_handler(args: argparse.Namespace) -> int:
    import trio

    from zimsend.agent.agent import AgentStopped, run_agent
    from zimsend.agent.senders.simulator import SimulatorSender

    config = agent_config(args)
    _setup_logging(args.log_level, f"device={config.device_id}")
    sender: Any
    if args.backend == "modem":
        sender = modem_sender(args)
    elif args.backend == "termux":
        sender = termux_sender(args)
    else:
        sender = SimulatorSender(simulation_config(args), device_id=config.device_id)
    log.info(
        "starting: server=%s tls=%s journal=%s backend=%s",
        config.server,
        config.tls,
        config.journal,
        args.backend,
    )

    async def main() -> AgentStopped | None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_sigterm, nursery.cancel_scope)
            if args.inject_inbound > 0 and isinstance(sender, SimulatorSender):
                nursery.start_soon(
                    sender.inject_periodically, args.inject_inbound, args.inject_interval
                )
            try:
                await run_agent(config, sender)
            except AgentStopped as exc:
                return exc
            finally:
                nursery.cancel_scope.cancel()
        return None  # pragma: no cover - run_agent only ends by raising

    try:
        stopped = trio.run(main)
    except BaseExceptionGroup as group:  # Ctrl-C lands inside nurseries, wrapped
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        log.info("interrupted; stopped")
        return 130
    return stopped.exit_code if stopped else 0


async def _stop_on_sigterm(scope: Any) -> None:
    """SIGTERM (systemd, Termux, docker stop) stops the agent cleanly: cancellation lets a
    handoff in progress finish and journal its outcome, where the default action would kill
    the process between "sending" and "sent"."""
    import signal

    import trio

    if not hasattr(signal, "SIGTERM"):  # pragma: no cover - platforms without it
        return
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            log.info("SIGTERM: stopping")
            scope.cancel()
            return


def _fleet_handler(args: argparse.Namespace) -> int:
    from zimsend.agent.fleet import FleetConfig, load_devices, run_fleet_blocking

    _setup_logging(args.log_level, "fleet")
    try:
        devices = load_devices(args.devices_file)
    except (OSError, ValueError, TypeError) as exc:
        _usage_error(f"cannot read --devices-file: {exc}")
    config = FleetConfig(
        server=args.server,
        tls=args.tls,
        ca_file=args.ca_file,
        batch_size=args.batch_size,
        batch_interval=args.batch_interval,
        status_interval=args.status_interval,
        duration=args.duration,
        simulation=simulation_config(args),
    )
    return run_fleet_blocking(config, devices)
