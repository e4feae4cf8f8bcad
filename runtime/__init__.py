"""Torch-free onnxruntime keyword-spotting runtime (installed as ``kws.runtime``)."""
