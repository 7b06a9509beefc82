"""Regenerate everything derived from `protos/zimsend/v1/*.proto`, and lint the protos.

    python -m zimsend.buildtools.codegen           # rewrite stale generated files
    python -m zimsend.buildtools.codegen --check   # exit 1 listing stale files, change nothing
    python -m zimsend.buildtools.codegen --lint    # buf lint (STANDARD + COMMENTS)

Why one module: the protos are the single source of the API (DESIGN.md), so every artefact
derived from them is produced here, by one pinned protoc (grpcio-tools, locked in uv.lock),
into a scratch directory first. Writing and checking are then the same comparison, which is
what makes "generated files are stale" a cheap, exact test. Generated files sit next to the
.proto files so that `from zimsend.v1 import sms_pb2` works from the `zimsend-protos`
distribution.

Artefacts, all byte-for-byte deterministic:
- `*_pb2.py`, `*_pb2_grpc.py` (protoc, grpc_tools) and `*_pb2.pyi`, `*_pb2_grpc.pyi`
  (mypy-protobuf);
- `descriptor_set.binpb`: what Envoy's gRPC-JSON transcoder loads, with imports, source info
  and google.rpc's error details, or Envoy cannot render detail types (DESIGN.md "The edge");
- `openapi.json`: from our own plugin, `zimsend.buildtools.openapi_plugin`.

Version guards: protoc and grpc_tools stamp their own version into the Python code as an
exact floor (`_pb2.py` refuses a protobuf runtime older than the protoc, `_pb2_grpc.py` a
grpcio older than the grpcio-tools). The phone's agent runs on the grpcio Termux ships
(`pkg install python-grpcio`, a few releases behind ours), so `relax_version_guards` puts the
floor the code really needs instead: `GRPCIO_FLOOR` and `PROTOBUF_FLOOR`, which
`protos/pyproject.toml` and `clients/pyproject.toml` declare and tests/test_agent_packaging.py
installs from PyPI and runs (docs/decisions.md).

buf cannot fetch google/api from the Buf Schema Registry here (no network), so `lint()` gives
buf a protoc-built image instead of sources and limits it to our files with `--path`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PROTOS = ROOT / "protos"
PACKAGE = "zimsend/v1"
GENERATED_GLOBS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")
DESCRIPTOR_SET = "descriptor_set.binpb"
OPENAPI = "openapi.json"
# Imported by nothing of ours, needed by Envoy to print google.rpc.Status details.
DESCRIPTOR_EXTRAS = ("google/rpc/error_details.proto", "google/rpc/status.proto")
# The oldest runtimes the generated code works with (tested: tests/test_agent_packaging.py).
# grpcio 1.64.0: the stubs pass `_registered_method=True` (grpcio 1.63) and
# `add_*Servicer_to_server` calls `server.add_registered_method_handlers` (1.64).
GRPCIO_FLOOR = "1.64.0"
# protobuf 5.26.1: `_pb2.py` needs only the descriptor-pool builder (protobuf 3.20), but the
# SDK's JSON printing uses `always_print_fields_with_no_presence` (5.26); one floor for both.
PROTOBUF_FLOOR = "5.26.1"
_GRPC_GUARD = re.compile(r"^GRPC_GENERATED_VERSION = '[0-9][^']*'$", re.MULTILINE)
_PROTOBUF_IMPORT = "from google.protobuf import runtime_version as _runtime_version\n"
_PROTOBUF_GUARD = re.compile(
    r"^_runtime_version\.ValidateProtobufRuntimeVersion\(\n(?:    [^\n]*\n)*?\)\n", re.MULTILINE
)
_PROTOBUF_NOTE = (
    "# zimsend codegen: protobuf's exact gencode-version check removed; zimsend-protos\n"
    f"# requires protobuf>={PROTOBUF_FLOOR}, the oldest runtime tested (docs/decisions.md).\n"
)


class CodegenError(RuntimeError):
    """protoc or buf failed; the message holds what they printed."""


def include_paths(proto_root: Path = PROTOS) -> list[Path]:
    """Our protos, protoc's well-known types, then googleapis-common-protos' google/api+rpc."""
    import google.api  # googleapis-common-protos; namespace package, so search its path
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = next(
        Path(p).parents[1] for p in google.api.__path__ if (Path(p) / "annotations.proto").exists()
    )
    return [proto_root, well_known, googleapis]


def proto_files(proto_root: Path = PROTOS) -> list[str]:
    """Our .proto files, relative to `proto_root`, in a stable order."""
    return sorted(
        p.relative_to(proto_root).as_posix() for p in (proto_root / PACKAGE).glob("*.proto")
    )


def _tool(name: str) -> str:
    """A console script of this environment (protoc plugins, buf), else from PATH."""
    script = Path(sysconfig.get_path("scripts")) / name
    if script.exists():
        return str(script)
    found = shutil.which(name)
    if found is None:
        raise CodegenError(f"{name} not found; run `python3 buildtools/run.py sync`")
    return found


def _protoc(args: Sequence[str], proto_root: Path) -> None:
    """Run grpc_tools' protoc in a child process, so its errors come back as an exception."""
    includes = [f"--proto_path={p}" for p in include_paths(proto_root)]
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *includes, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=proto_root, check=False)
    if done.returncode != 0:
        raise CodegenError(f"protoc failed:\n{done.stderr or done.stdout}")


def build_image(dest: Path, proto_root: Path = PROTOS, extras: Sequence[str] = ()) -> Path:
    """A FileDescriptorSet of our protos and all their imports, with comments (source info)."""
    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root / PACKAGE}")
    args = ["--include_imports", "--include_source_info", f"--descriptor_set_out={dest}"]
    _protoc([*args, *files, *extras], proto_root)
    return dest


def generate(out: Path, proto_root: Path = PROTOS) -> None:
    """Write every artefact under `out` (laid out like `proto_root`)."""
    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root / PACKAGE}")
    plugins = {
        "mypy": _tool("protoc-gen-mypy"),
        "mypy_grpc": _tool("protoc-gen-mypy_grpc"),
        "zimsend-openapi": _tool("protoc-gen-zimsend-openapi"),
    }
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [f"--plugin=protoc-gen-{name}={path}" for name, path in plugins.items()]
    args += [f"--{name}_out={out}" for name in ("python", "grpc_python", *plugins)]
    _protoc([*args, *files], proto_root)
    relax_version_guards(out / PACKAGE)
    build_image(out / PACKAGE / DESCRIPTOR_SET, proto_root, DESCRIPTOR_EXTRAS)


def relax_version_guards(directory: Path) -> None:
    """Replace the generators' exact-version guards by our floors (module docstring).

    `_pb2_grpc.py` keeps its guard, which names the version in its error, with
    `GRPCIO_FLOOR`. protobuf's check cannot be lowered the same way (it also demands the
    gencode's major version; we accept majors 5 to 7), so it goes, with a comment saying so.
    Fails when a generator's output no longer has the expected shape, rather than leave an
    exact pin in place unnoticed.
    """
    for path in sorted(directory.glob("*_pb2_grpc.py")):
        floor = f"GRPC_GENERATED_VERSION = '{GRPCIO_FLOOR}'"
        text, count = _GRPC_GUARD.subn(floor, path.read_text())
        if count != 1:
            raise CodegenError(f"{path.name}: no GRPC_GENERATED_VERSION line to relax")
        path.write_text(text)
    for path in sorted(directory.glob("*_pb2.py")):
        text, count = _PROTOBUF_GUARD.subn(_PROTOBUF_NOTE, path.read_text())
        if count != 1 or text.count(_PROTOBUF_IMPORT) != 1:
            raise CodegenError(f"{path.name}: no ValidateProtobufRuntimeVersion call to remove")
        path.write_text(text.replace(_PROTOBUF_IMPORT, ""))


def _generated_in(directory: Path) -> dict[str, Path]:
    """Generated files found in a package directory, by name."""
    names = [p for pattern in GENERATED_GLOBS for p in directory.glob(pattern)]
    names += [directory / n for n in (DESCRIPTOR_SET, OPENAPI) if (directory / n).exists()]
    return {p.name: p for p in names}


def stale_files(proto_root: Path = PROTOS) -> tuple[list[str], Path]:
    """Regenerate into a scratch directory and list what differs from `proto_root`.

    Returns the stale names (changed, missing or orphaned, relative to the package directory)
    and the scratch directory, which the caller removes.
    """
    scratch = Path(tempfile.mkdtemp(prefix="zimsend-codegen-"))
    generate(scratch, proto_root)
    fresh = _generated_in(scratch / PACKAGE)
    current = _generated_in(proto_root / PACKAGE)
    stale = [
        name
        for name in sorted(fresh.keys() | current.keys())
        if name not in fresh
        or name not in current
        or fresh[name].read_bytes() != current[name].read_bytes()
    ]
    return stale, scratch


def regenerate(proto_root: Path = PROTOS, check: bool = False) -> list[str]:
    """Bring the generated files up to date (or only report, with `check`); return stale names.

    Unchanged files are not rewritten, so their mtimes stay and nothing is reloaded needlessly.
    """
    stale, scratch = stale_files(proto_root)
    try:
        if not check:
            for name in stale:
                source, target = scratch / PACKAGE / name, proto_root / PACKAGE / name
                if source.exists():
                    shutil.copyfile(source, target)
                else:
                    target.unlink()  # its .proto is gone
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return stale


def lint(proto_root: Path = PROTOS, config: Path | None = None) -> list[str]:
    """buf lint our protos with `protos/buf.yaml`; returns the problems (empty when clean).

    buf reads a protoc image, so google/api imports resolve from googleapis-common-protos;
    `--path` keeps the imported google files out of the lint.
    """
    config = config or proto_root / "buf.yaml"
    with tempfile.TemporaryDirectory(prefix="zimsend-lint-") as scratch:
        image = build_image(Path(scratch) / "image.binpb", proto_root)
        cmd = [
            _tool("buf"),
            "lint",
            f"{image}#format=binpb",
            "--path",
            PACKAGE,
            "--config",
            str(config),
            "--error-format",
            "text",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=proto_root, check=False)
    problems = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 and not problems:
        raise CodegenError(f"buf lint failed:\n{done.stderr}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m zimsend.buildtools.codegen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="list stale files, change nothing")
    mode.add_argument("--lint", action="store_true", help="run buf lint on the protos")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.lint:
            problems = lint()
            print("\n".join(problems) or "buf lint: clean")
            return 1 if problems else 0
        stale = regenerate(check=args.check)
    except CodegenError as error:
        print(error, file=sys.stderr)
        return 2
    where = (PROTOS / PACKAGE).relative_to(ROOT)
    took = f"{time.monotonic() - started:.1f}s"
    if args.check and stale:
        print(f"stale generated files in {where} (run `python3 buildtools/run.py codegen`):")
        print("\n".join(f"  {name}" for name in stale))
        return 1
    print(f"codegen: {where} {'updated' if stale else 'up to date'} ({took})")
    print("".join(f"  {name}\n" for name in stale), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
