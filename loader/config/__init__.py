"""Configuration: the `config.yaml` schema and its hot reload, and TF Serving's own flags,
text-proto files and `ModelServerConfig`, all turned into one validated `Config`.

Sits above the data flow and may import any layer below it (today it needs none); imports
pydantic and TF Serving's config protos, never the TensorFlow runtime, boto3 or grpc.
"""
