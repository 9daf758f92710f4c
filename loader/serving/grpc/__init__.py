"""TF Serving's gRPC API: PredictionService and ModelService, their server, reload auth
and deadlines, and TensorFlow's ProfilerService forwarded to TensorFlow's own profiler server.

May import `loader.base`, `loader.servables` and `loader.serving`. grpc is imported by
`services`, `server` and `profiler` only.
"""
