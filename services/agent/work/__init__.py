"""Work an agent runs: ONNX inference, LLM batches and token streams, on a virtual clock."""
