"""Offline job: trains the MNIST classifier and exports the TorchServe .mar, ONNX and Paddle Inference
artifacts."""
