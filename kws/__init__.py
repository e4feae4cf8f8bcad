"""kws: keyword spotting from training to the edge.

This package must import without torch: the device runtime (``kws.runtime``) depends only on numpy,
onnxruntime and soundfile. Training, evaluation and export modules import torch themselves.
"""

__version__ = "0.1.0"
