"""Servables: SavedModels and TFLite models loaded into memory, their warmup, batching,
classify and regress.

May import `loader.base` only. TensorFlow is imported by `quiet_tf`, `savedmodel`,
`saved_model_proto`, `signature_io`, `tensor_proto`, `tflite`, `inference`, `warmup`,
`tfrecord_files` (the request log's files), `profiler` (TensorFlow's profiler server) and
`tf_protos` (TensorFlow's protos for config parsers); LiteRT (`ai_edge_litert`) by `tflite` alone;
`formats` imports its loaders on first use; `batching` and `batch_queue` need numpy alone.
"""
