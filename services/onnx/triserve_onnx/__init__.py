"""ONNX Runtime inference service (OIP v2 REST)."""
