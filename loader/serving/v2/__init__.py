"""The Open Inference Protocol (KServe v2), transport-agnostic: its datatypes and tensors
(`datatypes`), and its requests, checks, metadata and inference over the one `DataPlane`
(`inference`). The REST routes (`loader.serving.rest`) and the gRPC service
(`loader.serving.grpc`) are thin adapters over this package; it imports numpy only.
"""
