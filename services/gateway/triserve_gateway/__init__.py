"""FastAPI gateway: TorchServe-compatible and OIP v2 APIs, preprocessing, routing, failover, dynamic batching."""
