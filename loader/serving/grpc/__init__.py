"""TF Serving's gRPC API: PredictionService and ModelService, their server, reload auth
and deadlines, and TensorFlow's ProfilerService forwarded to TensorFlow's own profiler server;
and the Open Inference Protocol's GRPCInferenceService (`v2_service`, over `loader.serving.v2`),
its code generated from `open_inference_grpc.proto` at build time (setup.py).

May import `loader.base`, `loader.servables` and `loader.serving`. grpc is imported by
`services`, `server`, `profiler`, `v2_service` and the generated stubs only.
"""
