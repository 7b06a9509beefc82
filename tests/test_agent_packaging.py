"""The phone side installs without the server: `zimsend-client` must stay small (DESIGN.md,
Layout — a phone in Termux should not need SQLModel)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from zimsend.buildtools import codegen

ROOT = Path(__file__).resolve().parent.parent
# segno draws pairing QR codes (pure Python, no dependency of its own); httpx is the SDK's
# REST transport (zimsend.client; the agent never imports it).
ALLOWED = {
    "zimsend-protos",
    "grpcio",
    "trio",
    "gsmcodecs",
    "regex",
    "googleapis-common-protos",
    "protobuf",
    "segno",
    "httpx",
}


def test_the_client_distribution_depends_on_nothing_of_the_server() -> None:
    project = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(">")[0].split("=")[0].split("[")[0].split(";")[0].strip()
        for dep in project["dependencies"]
    }
    assert names <= ALLOWED, names - ALLOWED


SERVER_LIBRARIES = ("sqlmodel", "sqlalchemy", "pydantic", "zimsend.server")


def loaded_by(modules: str, watched: tuple[str, ...]) -> list[str]:
    """Of `watched`, the modules a fresh interpreter holds after `import <modules>`."""
    code = f"import sys, {modules}\nprint([m for m in {watched!r} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60
    )
    loaded: list[str] = ast.literal_eval(done.stdout.strip())
    return loaded


def test_the_agent_and_the_fleet_import_no_server_library() -> None:
    modules = "zimsend.agent.agent, zimsend.agent.fleet, zimsend.agent.cli, zimsend.segments"
    assert loaded_by(modules, SERVER_LIBRARIES) == []


def test_the_fleet_never_imports_trio() -> None:
    # One process, one model: the asyncio fleet shares only framework-free modules.
    assert loaded_by("zimsend.agent.fleet", ("trio",)) == []


# --- The grpcio a phone already has -------------------------------------------------------
#
# Termux cannot build grpcio with pip; the phone keeps Termux's `python-grpcio`, which trails
# grpc's releases. The generated code therefore carries our floors instead of the generators'
# exact versions (zimsend.buildtools.codegen.relax_version_guards), and these tests install
# the distributions from the working tree, with exactly those floors from PyPI, into a fresh
# environment and run the agent there.

# termux-packages main/python-grpcio (bumped to 1.83.0 on 2026-07-22). Termux has no Python
# protobuf package: pip installs PyPI's pure-Python wheel, the newest one.
TERMUX_GRPCIO = "1.83.0"

# What the phone really exercises of the generated code and both runtimes: every module,
# a DeviceLinkService stream through grpc's blocking and asyncio APIs (the stubs'
# `_registered_method`, the server's `add_registered_method_handlers`), and a refusal's
# google.rpc details.
PROBE = """
import asyncio, importlib, pathlib, sys
from concurrent import futures
import grpc, grpc.aio
from google.protobuf import __version__ as protobuf_version, any_pb2
from google.protobuf.internal import api_implementation
from google.rpc import error_details_pb2
import zimsend.agent.agent, zimsend.agent.cli, zimsend.v1
from zimsend.v1 import device_link_pb2 as pb, device_link_pb2_grpc as pb_grpc

package = pathlib.Path(zimsend.v1.__path__[0])
assert package.is_relative_to(sys.prefix), package  # the installed copy, not the workspace
for module in sorted(p.stem for p in package.glob("*_pb2*.py")):
    importlib.import_module(f"zimsend.v1.{module}")
detail = any_pb2.Any()
detail.Pack(error_details_pb2.ErrorInfo(reason="DEVICE_DISABLED"))
info = error_details_pb2.ErrorInfo()
assert detail.Unpack(info) and info.reason == "DEVICE_DISABLED"

class Echo(pb_grpc.DeviceLinkServiceServicer):
    def Connect(self, frames, context):
        for frame in frames:
            yield pb.ServerFrame(ping=pb.Ping(nonce=frame.pong.nonce))

server = grpc.server(futures.ThreadPoolExecutor(2))
pb_grpc.add_DeviceLinkServiceServicer_to_server(Echo(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    frames = iter([pb.DeviceFrame(pong=pb.Pong(nonce="blocking"))])
    replies = list(pb_grpc.DeviceLinkServiceStub(channel).Connect(frames, timeout=20))
    assert [r.ping.nonce for r in replies] == ["blocking"], replies

async def aio() -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.DeviceLinkServiceStub(channel).Connect(timeout=20)
        await call.write(pb.DeviceFrame(pong=pb.Pong(nonce="asyncio")))
        assert (await call.read()).ping.nonce == "asyncio"
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF

asyncio.run(aio())
server.stop(None)
print(grpc.__version__, protobuf_version, api_implementation.Type())
"""


def _uv() -> str:
    uv = Path(sys.executable).parent / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    assert found, "uv not found: run `python3 buildtools/run.py sync`"
    return found


def _floor(requirement_list: list[str], name: str) -> str:
    (spec,) = [r for r in requirement_list if re.match(rf"{name}\s*[><=~]", r)]
    return spec.split(">=", 1)[1].split(",")[0].strip()


@pytest.mark.parametrize("folder", ["protos", "clients"])
def test_the_phone_side_declares_the_floors_the_generated_code_carries(folder: str) -> None:
    requires = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert _floor(requires, "grpcio") == codegen.GRPCIO_FLOOR
    assert _floor(requires, "protobuf") == codegen.PROTOBUF_FLOOR
    stub = (codegen.PROTOS / codegen.PACKAGE / "device_link_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{codegen.GRPCIO_FLOOR}'" in stub
    messages = (codegen.PROTOS / codegen.PACKAGE / "device_link_pb2.py").read_text()
    assert "ValidateProtobufRuntimeVersion" not in messages


@pytest.mark.slow
@pytest.mark.parametrize(
    ("grpcio", "protobuf"),
    [
        pytest.param(codegen.GRPCIO_FLOOR, codegen.PROTOBUF_FLOOR, id="floors"),
        pytest.param(TERMUX_GRPCIO, None, id="termux"),
    ],
)
def test_the_agent_installs_and_runs_on_an_older_grpcio(
    tmp_path: Path, grpcio: str, protobuf: str | None
) -> None:
    """A fresh environment gets exactly this grpcio (and protobuf) from PyPI, then the
    working tree's `zimsend-protos` and `zimsend-client`: the install must keep them, and the
    agent must import, stream and print its help there, with protobuf's upb and pure-Python
    runtimes (Termux gets the pure-Python one)."""
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    pins = [f"grpcio=={grpcio}"] + ([f"protobuf=={protobuf}"] if protobuf else [])
    (tmp_path / "constraints.txt").write_text("\n".join(pins) + "\n")
    # No VIRTUAL_ENV or PYTHONPATH from the test run, so nothing of the workspace leaks in.
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}
    }

    def run(*cmd: str | Path, **extra: str) -> str:
        done = subprocess.run(
            [str(c) for c in cmd],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**env, **extra},
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    run(_uv(), "venv", "--quiet", "--python", sys.executable, venv)
    # --refresh-package: uv would otherwise reuse a wheel it built from an older working tree;
    # --no-sources: the workspace's [tool.uv.sources] would install zimsend-protos editable.
    run(
        _uv(),
        "pip",
        "install",
        "--quiet",
        "--python",
        python,
        "--constraint",
        tmp_path / "constraints.txt",
        "--refresh-package",
        "zimsend-protos",
        "--refresh-package",
        "zimsend-client",
        "--no-sources",
        ROOT / "protos",
        ROOT / "clients",
    )

    (installed,) = venv.glob("lib/python3*/site-packages/zimsend/v1")
    for generated in (codegen.PROTOS / codegen.PACKAGE).glob("*_pb2*.py"):
        assert (installed / generated.name).read_bytes() == generated.read_bytes(), generated

    run(python, "-c", "import zimsend.agent.agent, zimsend.v1.device_link_pb2_grpc")
    (tmp_path / "probe.py").write_text(PROBE)
    for implementation in ("upb", "python"):
        versions = run(
            python, tmp_path / "probe.py", PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=implementation
        ).split()
        assert versions[0] == grpcio, versions
        assert versions[2] == implementation, versions
        assert protobuf is None or versions[1] == protobuf, versions
    assert "termux" in run(venv / "bin" / "zimsend", "device", "run", "--help")


def test_the_sdk_and_the_user_commands_import_no_server_library() -> None:
    # tests/test_sdk.py also runs the SDK from a virtualenv holding only this distribution.
    assert loaded_by("zimsend.client, zimsend.client.cli", (*SERVER_LIBRARIES, "trio")) == []


def test_the_device_agent_never_imports_httpx() -> None:
    assert loaded_by("zimsend.agent.agent, zimsend.agent.cli", ("httpx",)) == []
