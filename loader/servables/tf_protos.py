"""TensorFlow's own proto files that TF Serving's configs embed (`ConfigProto` in a
SessionBundleConfig), for a parser that builds its own descriptor pool.

Only TensorFlow's import brings these files, so asking for them imports TensorFlow
(quietly, as `quiet_tf` does at start).
"""

from __future__ import annotations

from google.protobuf import descriptor

from loader.servables.quiet_tf import import_tensorflow


def session_config_files() -> list[descriptor.FileDescriptor]:
    """`tensorflow/core/protobuf/config.proto` (ConfigProto, BatchingOptions) and
    `named_tensor.proto` (NamedTensorProto), each after the files it depends on."""
    import_tensorflow()
    from tensorflow.core.protobuf import config_pb2, named_tensor_pb2

    ordered: list[descriptor.FileDescriptor] = []

    def visit(file: descriptor.FileDescriptor) -> None:
        if file not in ordered:
            for dependency in file.dependencies:
                visit(dependency)
            ordered.append(file)

    visit(config_pb2.DESCRIPTOR)
    visit(named_tensor_pb2.DESCRIPTOR)
    return ordered
