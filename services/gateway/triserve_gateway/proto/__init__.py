"""KServe v2 gRPC: ``grpc_predict_v2.proto`` and the Python code grpcio-tools generates from it
(``make proto``; never edited by hand)."""
