"""The `zimsend` commands for users (issue 15 item 2), run as a user runs them — the real
`zimsend` executable in a subprocess, with its own config folder — against the real server
behind the real Envoy, a real simulated phone, and a real worker delivering to a real receiver.

Acceptance: `zimsend sms bulk --csv` of 250 rows shows progress on stderr and ends with a
summary of what failed and why; `--json` output parses.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _devices import start_agent, wait_for
from _processes import ZIMSEND
from _qr import decode_qr_lines, qr_lines
from conftest import Stack

from zimsend.client import ZimSend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    data_dir = tmp_path_factory.mktemp("zimsend-data")
    return make_env(
        data_dir,
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS="[0,1,2]",
    )


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-config")


def run(
    config_home: Path,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`zimsend ARGS…` with its own config folder and no ZIMSEND_* variable of ours."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("ZIMSEND_")}
    base.update(XDG_CONFIG_HOME=str(config_home), **(env or {}))
    return subprocess.run(
        [ZIMSEND, *args], input=stdin, capture_output=True, text=True, env=base, timeout=timeout
    )


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def logged_in(stack: Stack, config_home: Path) -> Path:
    ok(
        run(
            config_home,
            "login",
            "--base-url",
            f"{stack.base_url}/v1",
            "--client-id",
            stack.client_id,
            "--api-key-stdin",
            stdin=stack.api_key + "\n",
        )
    )
    return config_home


@pytest.fixture(scope="module")
def phone(
    stack: Stack, zimsend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with ZimSend(api_key=stack.api_key, client_id=stack.client_id, base_url=stack.base_url) as zs:
        made = zs.devices.create("cli phone")
        zs.devices.update(made.device_id, send_interval_ms=0)
        workdir = tmp_path_factory.mktemp("phone")
        with start_agent(
            zimsend_env,
            stack.envoy.device_target,
            stack.client_id,
            made.device_id,
            made.device_password,
            workdir,
            "--delivery-delay",
            "0.2",
            "--send-delay",
            "0.05",
        ):
            wait_for(lambda: zs.devices.get(made.device_id).status == "online", 30, "phone online")
            yield made.device_id


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- login ----------------------------------------------------------------------------------


def test_login_saves_a_private_profile_and_the_environment_wins(
    stack: Stack,
    logged_in: Path,
    tmp_path: Path,
) -> None:
    config = logged_in / "zimsend" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert stack.api_key in config.read_text()
    keys = json.loads(ok(run(logged_in, "keys", "list", "--json")).stdout)
    assert any(k["last4"] == stack.api_key[-4:] for k in keys)

    # Each environment variable wins over the profile on its own.
    refused = run(logged_in, "keys", "--json", env={"ZIMSEND_API_KEY": "zs_live_wrong"})
    assert refused.returncode == 1
    assert "INVALID_API_KEY" in refused.stderr
    # A wrong key is not saved; a missing profile says how to log in.
    elsewhere = tmp_path / "other-config"
    bad = run(
        elsewhere,
        "login",
        "--base-url",
        stack.base_url,
        "--client-id",
        stack.client_id,
        "--api-key",
        "zs_live_wrong",
    )
    assert bad.returncode == 1
    assert "INVALID_API_KEY" in bad.stderr
    assert not (elsewhere / "zimsend" / "config.toml").exists()
    none = run(elsewhere, "sms", "history")
    assert none.returncode == 2
    assert "zimsend login" in none.stderr


# --- sms ------------------------------------------------------------------------------------


def test_sms_send_waits_for_delivered_and_json_parses(logged_in: Path, phone: str) -> None:
    sent = json.loads(
        ok(
            run(
                logged_in,
                "sms",
                "send",
                "--to",
                "+33612345650",
                "--message",
                "Votre colis arrive",
                "--metadata",
                '{"order": 9}',
                "--wait",
                "--json",
            )
        ).stdout
    )
    assert sent["status"] == "delivered"
    assert sent["device_id"] == phone
    assert sent["metadata"] == {"order": 9}
    status = json.loads(ok(run(logged_in, "sms", "status", sent["message_id"], "--json")).stdout)
    assert status["message_id"] == sent["message_id"]
    assert status["delivered_at"]
    table = ok(run(logged_in, "sms", "history", "--to", "+33612345650")).stdout
    assert table.splitlines()[0].split()[:3] == ["MESSAGE", "ID", "STATUS"]
    assert sent["message_id"] in table
    assert "delivered" in table
    same_over_grpc = json.loads(
        ok(
            run(
                logged_in, "sms", "history", "--to", "+33612345650", "--json", "--transport", "grpc"
            )
        ).stdout
    )
    assert [m["message_id"] for m in same_over_grpc] == [sent["message_id"]]
    refused = run(logged_in, "sms", "send", "--to", "+33 12", "--message", "x")
    assert refused.returncode == 1
    assert "INVALID_PHONE_NUMBER" in refused.stderr
    assert "to:" in refused.stderr


def _bulk_csv(path: Path, rows: int) -> dict[int, str]:
    """`rows` messages with three bad ones; → {file line: expected code} of the bad ones."""
    bad = {
        2 + 17: "INVALID_PHONE_NUMBER",
        2 + 120: "INVALID_PHONE_NUMBER",
        2 + 201: "MESSAGE_TOO_LONG",
    }
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["to", "name", "order"])
        for i in range(rows):
            line = i + 2
            to = f"+336{10000000 + i:08d}"
            name = f"Client {i}"
            if line == 2 + 17:
                to = "+33 12"
            elif line == 2 + 120:
                to = ""
            elif line == 2 + 201:
                name = "x" * 1700
            writer.writerow([to, name, f"A-{i}"])
    return bad


def test_bulk_csv_of_250_rows_shows_progress_and_a_summary(logged_in: Path, tmp_path: Path) -> None:
    path = tmp_path / "campaign.csv"
    bad = _bulk_csv(path, 250)
    done = run(
        logged_in,
        "sms",
        "bulk",
        "--csv",
        str(path),
        "--message",
        "Bonjour {name}, votre commande {order} est prête",
        "--schedule",
        _tomorrow(),
        "--batch-size",
        "50",
        timeout=300,
    )
    assert done.returncode == 1, done.stderr  # some rows failed
    progress = [line for line in done.stderr.splitlines() if line.startswith("sending [")]
    assert len(progress) >= 6
    assert progress[-1].startswith("sending [" + "#" * 30 + "] 250/250")
    assert "queued 247, failed 3" in progress[-1]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("250 rows: 247 queued, 3 failed (batches: batch_")
    failures = {int(line.split()[0]): line for line in lines[2:] if line[:1].isdigit()}
    assert sorted(failures) == sorted(bad)
    for line, code in bad.items():
        assert code in failures[line]
    assert "1600" in failures[2 + 201]

    as_json = run(
        logged_in,
        "sms",
        "bulk",
        "--csv",
        str(path),
        "--message",
        "Bonjour {name}",
        "--schedule",
        _tomorrow(),
        "--json",
        timeout=300,
    )
    report = json.loads(as_json.stdout)
    assert (report["total"], report["queued"], report["failed"]) == (250, 247, 3)
    assert {f["line"]: f["code"] for f in report["failures"]} == bad
    assert len({m["message_id"] for m in report["messages"]}) == 247
    assert all(m["to"].startswith("+336") for m in report["messages"])


def test_running_a_bulk_again_resends_nothing_unless_given_a_new_run_id(
    logged_in: Path,
    tmp_path: Path,
) -> None:
    """An interrupted campaign is re-run as is: the rows already queued come back with their
    message ids instead of going out twice (the keys are hashes of the bodies)."""
    path = tmp_path / "again.csv"
    _bulk_csv(path, 30)
    command = [
        "sms",
        "bulk",
        "--csv",
        str(path),
        "--message",
        "Rappel {name}",
        "--schedule",
        _tomorrow(),
        "--batch-size",
        "10",
        "--json",
    ]
    first = json.loads(run(logged_in, *command, timeout=120).stdout)
    again = json.loads(run(logged_in, *command, timeout=120).stdout)
    assert first["queued"] == again["queued"] == 29  # one bad row (line 19)
    assert [m["message_id"] for m in again["messages"]] == [
        m["message_id"] for m in first["messages"]
    ]
    on_purpose = json.loads(run(logged_in, *command, "--run-id", "second-wave", timeout=120).stdout)
    assert on_purpose["queued"] == 29
    assert not {m["message_id"] for m in on_purpose["messages"]} & {
        m["message_id"] for m in first["messages"]
    }


def test_export_writes_a_complete_file(logged_in: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    ok(run(logged_in, "sms", "export", "--format", "jsonl", "--output", str(out)))
    lines = out.read_text().splitlines()
    assert json.loads(lines[-1])["end_of_export"] is True
    assert all("message_id" in json.loads(line) for line in lines[:-1])
    csv_text = ok(run(logged_in, "sms", "export", "--status", "queued")).stdout
    assert csv_text.rstrip().splitlines()[-1].startswith("# end of export:")


# --- devices, keys, webhooks, events --------------------------------------------------------


def test_devices_add_prints_the_pairing_uri_and_its_qr_code(logged_in: Path, phone: str) -> None:
    added = ok(run(logged_in, "devices", "add", "desk phone")).stdout
    uri = next(line.split()[-1] for line in added.splitlines() if line.startswith("pairing URI"))
    assert uri.startswith("zimsend://pair?")
    assert decode_qr_lines(qr_lines(added)) == [uri]
    devices = json.loads(ok(run(logged_in, "devices", "list", "--json")).stdout)
    by_id = {d["device_id"]: d for d in devices}
    assert by_id[phone]["status"] == "online"
    new_id = next(d["device_id"] for d in devices if d["name"] == "desk phone")
    changed = json.loads(
        ok(
            run(logged_in, "devices", "set", new_id, "--daily-cap", "500", "--no-enabled", "--json")
        ).stdout
    )
    assert (changed["daily_cap"], changed["enabled"]) == (500, False)
    table = ok(run(logged_in, "devices")).stdout
    assert phone in table
    assert "online" in table
    ok(run(logged_in, "devices", "remove", new_id))


def test_keys_create_list_revoke(logged_in: Path) -> None:
    made = json.loads(ok(run(logged_in, "keys", "create", "ci", "--test", "--json")).stdout)
    assert made["api_key"].startswith("zs_test_")
    ok(run(logged_in, "keys", "revoke", made["key_id"]))
    keys = {k["key_id"]: k for k in json.loads(ok(run(logged_in, "keys", "--json")).stdout)}
    assert keys[made["key_id"]]["revoked_at"]


def test_events_tail_follows_real_deliveries(
    logged_in: Path,
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    from _receivers import Receiver, start_worker

    secret = "whsec_" + "C" * 43 + "="
    with Receiver(tmp_path, secret=secret) as receiver, start_worker(zimsend_env, tmp_path):
        hook = json.loads(
            ok(
                run(
                    logged_in,
                    "webhooks",
                    "add",
                    receiver.url,
                    "--events",
                    "sms.delivered",
                    "--secret",
                    secret,
                    "--json",
                )
            ).stdout
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMSEND_")}
        tail = subprocess.Popen(
            [
                ZIMSEND,
                "events",
                "tail",
                "--lines",
                "0",
                "--count",
                "1",
                "--interval",
                "0.3",
                "--webhook",
                hook["webhook_id"],
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env, XDG_CONFIG_HOME=str(logged_in)),
        )
        tested: list[str] = []
        try:
            # A test sent before the tail's first look is old to it and not printed; on a slow
            # machine that look may come late, so test again until the tail prints a new one.
            for _ in range(20):
                tested.append(
                    json.loads(
                        ok(run(logged_in, "webhooks", "test", hook["webhook_id"], "--json")).stdout
                    )["event_id"]
                )
                try:
                    out, err = tail.communicate(timeout=3)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                raise AssertionError("events tail printed none of 20 webhook tests")
        finally:
            tail.kill()
        assert tail.returncode == 0, err
        entry = json.loads(out.splitlines()[0])
        assert entry["event_id"] in tested
        assert entry["event"] == "webhook.test"
        assert entry["success"] is True
        assert entry["response_status"] == 200
        logs = ok(run(logged_in, "webhooks", "logs", "--webhook", hook["webhook_id"])).stdout
        assert entry["event_id"] in logs
        assert " ok " in logs
        listed = json.loads(ok(run(logged_in, "webhooks", "--json")).stdout)
        assert hook["webhook_id"] in {h["webhook_id"] for h in listed}
        ok(run(logged_in, "webhooks", "remove", hook["webhook_id"]))
