"""Export: turn recordings (and, with the [export] extra, PyTorch models) into ONNX bundles."""
