"""What lives on disk: the run folder, checkpoints, exports (safetensors, ONNX), finding runs."""
