"""Paddle Inference service (OIP v2 REST)."""
