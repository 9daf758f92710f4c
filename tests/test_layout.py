"""The package layout's rules, read from the source: imports point down the data flow, no
module outgrows one concept, and the heavy libraries stay in the modules named for them.

Every import counts, also those inside functions (the lazy ones are still dependencies).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("loader", "policies")
MAX_LINES = 400

# What each layer may import of ours (a prefix matches the package and its modules).
ALLOWED: dict[str, tuple[str, ...]] = {
    "loader.base": (),
    "loader.sources": ("loader.base", "loader.sources"),
    "loader.manager": ("loader.base", "loader.manager", "policies"),
    "loader.servables": ("loader.base", "loader.servables"),
    "loader.serving.rest": (
        "loader.base", "loader.manager", "loader.servables", "loader.serving.dataplane",
        "loader.serving.metrics", "loader.serving.operator_view", "loader.serving.rest",
        "loader.serving.decode_budget", "loader.serving.rate_limited_log", "policies",
        "loader.serving.request_log", "loader.serving.prediction_protos", "loader.serving.tls",
        "loader.serving.v2",
    ),
    "loader.serving.grpc": (
        "loader.base", "loader.manager", "loader.servables", "loader.serving.dataplane",
        "loader.serving.metrics", "loader.serving.grpc", "loader.serving.decode_budget",
        "loader.serving.rate_limited_log", "policies", "loader.serving.request_log",
        "loader.serving.prediction_protos", "loader.serving.tls", "loader.serving.v2",
    ),
    "loader.serving.v2": (
        "loader.base", "loader.manager", "loader.servables", "loader.serving.dataplane",
        "loader.serving.metrics", "loader.serving.decode_budget", "loader.serving.v2",
    ),
    "loader.serving": (
        "loader.base", "loader.manager", "loader.servables", "loader.serving", "policies",
    ),
    "loader.config": (
        "loader.base", "loader.sources", "loader.manager", "loader.servables",
        "loader.serving", "loader.config", "policies",
    ),
    "loader.cluster": (
        "loader.base", "loader.sources", "loader.manager", "loader.servables", "loader.serving",
        "loader.config", "loader.cluster", "loader.app.parts", "loader.app.servers",
        "policies",
    ),
    "loader.app": ("loader", "policies"),
    "loader.__main__": ("loader.app",),
    "loader": (),
    "policies": ("policies",),
}

# The only modules that may import these libraries (README and package docstrings say so).
HEAVY: dict[str, set[str]] = {
    "tensorflow": {
        "loader.app.demo",
        "loader.servables.inference",
        "loader.servables.profiler",
        "loader.servables.quiet_tf",
        "loader.servables.saved_model_proto",
        "loader.servables.savedmodel",
        "loader.servables.signature_io",
        "loader.servables.tensor_proto",
        "loader.servables.tf_protos",
        "loader.servables.tfrecord_files",
        "loader.servables.tflite",
        "loader.servables.warmup",
    },
    "ai_edge_litert": {"loader.servables.tflite"},
    "boto3": {"loader.sources.s3_client"},
    "botocore": {"loader.sources.s3_client"},
    "s3transfer": {"loader.sources.s3_client"},
    "google.cloud": {"loader.sources.gcs_client"},
    "azure": {"loader.sources.azure_client"},
    "grpc": {
        "loader.serving.grpc.answers", "loader.serving.grpc.health", "loader.serving.grpc.profiler",
        "loader.serving.grpc.server", "loader.serving.grpc.services",
        # protoc's stubs for the Open Inference Protocol, generated at build time (setup.py).
        "loader.serving.grpc.open_inference_grpc_pb2_grpc", "loader.serving.grpc.v2_service",
    },
    "ray": {"loader.cluster.application"},
}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _imports(module: str, path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import"
            assert node.module is not None
            found.add(node.module)
            # `from loader.sources import versions` imports the module loader.sources.versions
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _layer(module: str) -> str:
    return max((layer for layer in ALLOWED if _within(module, layer)), key=len)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = dict(_modules())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_data_flow(module: str) -> None:
    layer = _layer(module)
    allowed = ALLOWED[layer]
    wrong = sorted(
        name
        for name in _imports(module, MODULES[module])
        if name in MODULES and not any(_within(name, ok) for ok in allowed)
    )
    assert not wrong, f"{module} (layer {layer}) imports {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_outgrows_one_concept(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES})"


def test_loader_keeps_only_its_entry_points_and_shared_types_at_the_top() -> None:
    top = sorted(p.name for p in (ROOT / "loader").glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "base.py"]


def test_every_package_says_what_it_is_and_what_it_may_import() -> None:
    for init in sorted((ROOT / "loader").rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(ROOT)} has no docstring"
        if init.parent != ROOT / "loader":
            assert "import" in doc, f"{init.relative_to(ROOT)} does not say what it may import"


@pytest.mark.parametrize("library", sorted(HEAVY))
def test_heavy_libraries_stay_in_their_modules(library: str) -> None:
    importers = {
        module
        for module, path in MODULES.items()
        if any(_within(name, library) for name in _imports(module, path))
    }
    assert importers == HEAVY[library]


def test_the_rules_see_every_module() -> None:
    # A sanity check on the walk itself: a rule over no modules would pass vacuously.
    assert len(MODULES) > 50
    assert {"loader.base", "loader.sources.store_source", "loader.serving.rest.app"} <= set(MODULES)
