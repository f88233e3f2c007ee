"""The service's view of the ONNX Runtime adapter, which lives in inference/ (below service and training)."""

from inference.onnx_model import EXTRA_OUTPUTS, OnnxDefectModel, resolve_model_dir  # noqa: F401
