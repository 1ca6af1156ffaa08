"""Bridges to other tools' files: insightface .bin sets, foreign embeddings, bob score files, ONNX."""
