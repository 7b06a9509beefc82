"""Everything generated from the protos is fresh, deterministic, linted and usable.

The protos are the single source of the API (DESIGN.md): these tests fail when someone edits a
.proto and forgets `python3 buildtools/run.py codegen`, when generation stops being
reproducible, or when the descriptor set Envoy loads lacks what Envoy needs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from zimsend.buildtools import codegen

PACKAGE_DIR = codegen.PROTOS / codegen.PACKAGE


def declared_services() -> set[str]:
    """Service names read from the .proto sources themselves, not from generated code."""
    return {
        f"zimsend.v1.{name}"
        for proto in PACKAGE_DIR.glob("*.proto")
        for name in re.findall(r"^service\s+(\w+)", proto.read_text(), re.MULTILINE)
    }


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(
        (PACKAGE_DIR / codegen.DESCRIPTOR_SET).read_bytes()
    )


def test_committed_artefacts_are_not_stale() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "zimsend.buildtools.codegen", "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_generation_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    codegen.generate(tmp_path / "a")
    codegen.generate(tmp_path / "b")

    def files(root: Path) -> list[Path]:
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())

    first, second = files(tmp_path / "a"), files(tmp_path / "b")
    assert first == second
    assert len(first) > 4
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_check_reports_edited_and_orphaned_files(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(codegen.PROTOS, copy, ignore=shutil.ignore_patterns("*.toml", "__pycache__"))
    package = copy / codegen.PACKAGE
    (package / "sms_pb2.py").write_text("# edited by hand\n")
    (package / "removed_pb2.py").write_text("# its .proto is gone\n")

    assert codegen.regenerate(copy, check=True) == ["removed_pb2.py", "sms_pb2.py"]
    assert (package / "removed_pb2.py").exists()  # --check changes nothing

    assert codegen.regenerate(copy) == ["removed_pb2.py", "sms_pb2.py"]
    assert not (package / "removed_pb2.py").exists()
    assert codegen.regenerate(copy, check=True) == []


def test_buf_lint_passes() -> None:
    assert codegen.lint() == []


def test_buf_lint_really_runs_with_comment_rules(tmp_path: Path) -> None:
    """A proto with an uncommented field must be reported, or `test_buf_lint_passes` proves
    nothing."""
    (tmp_path / codegen.PACKAGE).mkdir(parents=True)
    (tmp_path / codegen.PACKAGE / "probe.proto").write_text(
        "// A file that exists to be linted.\n"
        'syntax = "proto3";\n\n'
        "package zimsend.v1;\n\n"
        "// A message whose field has no comment.\n"
        "message Probe {\n"
        "  string uncommented = 1;\n"
        "}\n"
    )
    problems = codegen.lint(tmp_path, config=codegen.PROTOS / "buf.yaml")
    assert any(
        p.startswith("zimsend/v1/probe.proto:8:") and '"uncommented"' in p for p in problems
    ), problems


def test_descriptor_set_has_every_service_and_the_error_details() -> None:
    files = descriptor_set().file
    pool = descriptor_pool.DescriptorPool()
    for file in files:  # protoc lists dependencies first, so this also proves completeness
        pool.Add(file)

    assert pool.FindMessageTypeByName("google.rpc.ErrorInfo")
    assert pool.FindMessageTypeByName("google.rpc.Status")
    assert pool.FindMessageTypeByName("google.rpc.RetryInfo")
    services = {
        f"{file.package}.{service.name}"
        for file in files
        for service in file.service
        if file.package == "zimsend.v1"
    }
    assert "zimsend.v1.SmsService" in services
    assert services == declared_services()


def test_descriptor_set_keeps_comments_and_http_rules() -> None:
    """Envoy transcodes from the http rules; source info lets it (and tools) show comments."""
    ours = [f for f in descriptor_set().file if f.package == "zimsend.v1"]
    assert {f.name for f in ours} == {
        f"{codegen.PACKAGE}/{p.name}" for p in PACKAGE_DIR.glob("*.proto")
    }
    assert all(f.source_code_info.location for f in ours)
    rules = {
        method.name: method.options.Extensions[annotations_pb2.http]
        for f in ours
        for service in f.service
        for method in service.method
    }
    assert rules["SendSms"].post == "/v1/sms/send"
    assert rules["SendSms"].body == "*"


def test_stubs_import_as_zimsend_v1() -> None:
    from zimsend.v1 import common_pb2, sms_pb2, sms_pb2_grpc

    assert "from zimsend.v1 import common_pb2" in (PACKAGE_DIR / "sms_pb2.py").read_text()
    request = sms_pb2.SendSmsRequest(to="+33612345678", message="Bonjour", priority="high")  # type: ignore[arg-type]  # a name: protobuf takes it
    assert request.priority == common_pb2.high == 2
    assert hasattr(sms_pb2_grpc, "SmsServiceStub")
    assert hasattr(sms_pb2_grpc, "SmsServiceServicer")
    assert (PACKAGE_DIR / "sms_pb2.pyi").exists()
    assert (PACKAGE_DIR / "sms_pb2_grpc.pyi").exists()


@pytest.mark.parametrize("name", sorted(p.stem for p in PACKAGE_DIR.glob("*.proto")))
def test_every_proto_has_its_stubs(name: str) -> None:
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
        assert (PACKAGE_DIR / f"{name}{suffix}").is_file(), f"{name}{suffix}"


def test_generated_code_carries_our_version_floors_not_the_generators() -> None:
    """A phone keeps Termux's older grpcio (docs/decisions.md): no exact-version guard may
    survive codegen; tests/test_agent_packaging.py runs the floors themselves."""
    for stub in PACKAGE_DIR.glob("*_pb2_grpc.py"):
        assert f"GRPC_GENERATED_VERSION = '{codegen.GRPCIO_FLOOR}'" in stub.read_text(), stub
    for module in PACKAGE_DIR.glob("*_pb2.py"):
        assert "runtime_version" not in module.read_text(), module


def test_relaxing_the_guards_fails_on_output_it_does_not_recognise(tmp_path: Path) -> None:
    """A generator that changes its guard's shape must stop codegen, not ship an exact pin."""
    (tmp_path / "probe_pb2_grpc.py").write_text("import grpc\nGRPC_GENERATED_VERSION = X\n")
    with pytest.raises(codegen.CodegenError, match="GRPC_GENERATED_VERSION"):
        codegen.relax_version_guards(tmp_path)
    (tmp_path / "probe_pb2_grpc.py").unlink()
    (tmp_path / "probe_pb2.py").write_text("from google.protobuf import descriptor\n")
    with pytest.raises(codegen.CodegenError, match="ValidateProtobufRuntimeVersion"):
        codegen.relax_version_guards(tmp_path)
