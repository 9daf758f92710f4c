"""The manager: per-version state machines, loads on worker threads, ref-counted handles.

May import `loader.base` and `policies` only; it never imports TensorFlow, boto3 or grpc:
loading a version is a function it is given.
"""
