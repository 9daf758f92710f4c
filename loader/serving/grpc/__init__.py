"""TF Serving's gRPC API: PredictionService and ModelService, their server, reload auth.

May import `loader.base`, `loader.servables` and `loader.serving`. grpc is imported by
`services` and `server` only.
"""
