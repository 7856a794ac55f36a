"""FastAPI gateway: TorchServe-compatible and OIP v2 APIs, preprocessing, routing, failover, batching."""

__version__ = "0.1.0"
