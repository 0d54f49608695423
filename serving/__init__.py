"""TF Serving: gRPC client, local TF-Serving-compatible server and production configuration."""
