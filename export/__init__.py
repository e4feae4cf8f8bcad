"""ONNX export and int8 quantization of kws checkpoints (installed as ``kws.export``)."""
