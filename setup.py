"""Generates the Open Inference Protocol's gRPC code from its .proto when the package is built.

Everything else about the package is in pyproject.toml. `pip install .` and the editable
`pip install -e .` both run build_py, which writes `open_inference_grpc_pb2.py` (with its
`.pyi`) and `open_inference_grpc_pb2_grpc.py` beside the .proto; they are not committed.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = "loader/serving/grpc/open_inference_grpc.proto"


def generate_protocol_code() -> None:
    """Runs grpcio-tools' protoc on the .proto, paths relative to the root so the generated
    modules import each other as `loader.serving.grpc...`."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main([
        "protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={ROOT}", f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}", str(ROOT / PROTO),
    ])
    if status != 0:
        raise SystemExit(f"protoc failed on {PROTO} (status {status})")
    # Triton's client (tritonclient.grpc) registers the same `inference.*` message names in
    # protobuf's default pool, and a second file defining them fails to import; a pool of
    # our own lets one process hold both (a test worker, or an application embedding both).
    pb2 = ROOT / PROTO.replace(".proto", "_pb2.py")
    code = pb2.read_text()
    default_pool = "_descriptor_pool.Default().AddSerializedFile("
    if default_pool not in code:
        raise SystemExit(f"{pb2.name}: protoc's output changed, {default_pool!r} not found")
    pb2.write_text(code.replace(default_pool, "_descriptor_pool.DescriptorPool().AddSerializedFile("))


class BuildPyWithProtocol(build_py):
    """build_py that generates the protocol's modules first, so they are packaged too."""

    def run(self) -> None:
        generate_protocol_code()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProtocol})
