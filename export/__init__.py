"""ONNX export and int8 quantization of kws checkpoints (installed as ``kws.export``).

``pipeline`` (``export_files``: the four files; ``export_checkpoint``: the checked ``kws export``), ``options``
(``ExportOptions``, ``ExportPaths``), ``files`` (staging, making and installing the files), ``clips`` (the clips
an export runs on), ``measure`` (the checks and the comparison table), ``choice`` (the int8 variant shipped),
``onnx_export`` (graphs + metadata), ``quantize``, ``checks``, ``streaming``, ``synthetic``, ``cli``.
"""
