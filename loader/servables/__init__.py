"""Servables: SavedModels loaded into memory, their warmup, batching, classify and regress.

May import `loader.base` only. TensorFlow is imported by `quiet_tf`, `savedmodel`,
`saved_model_proto`, `tensor_proto`, `inference`, `warmup` and `profiler` (TensorFlow's
profiler server); `batching` and `batch_queue` need numpy alone.
"""
