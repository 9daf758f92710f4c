"""The Open Inference Protocol (KServe v2), transport-agnostic: its datatypes and tensors
(`datatypes`), its requests, checks, metadata and inference over the one `DataPlane`
(`inference`), and Triton's repository extension over the config's models (`repository`).
The REST routes (`loader.serving.rest`) and the gRPC service
(`loader.serving.grpc`) are thin adapters over this package; it imports numpy only.
"""
