"""Using a trained run: predict (classify text), generate (continue a prompt), export (Hugging
Face, ONNX)."""
