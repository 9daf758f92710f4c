"""Configuration: the `config.yaml` schema and its hot reload, and TF Serving's own flags,
text-proto files and `ModelServerConfig`, all turned into one validated `Config`.

Sits above the data flow and may import any layer below it (today `loader.servables.tf_protos`
alone, for TensorFlow's ConfigProto, and only when a session or platform config file is
given); imports pydantic and TF Serving's config protos, never boto3 or grpc.
"""
