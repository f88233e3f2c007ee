"""The ONNX Runtime layer: below service/ and training/, above the pure core (../shared/design.md, Layers)."""
