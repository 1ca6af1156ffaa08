"""Datasets on disk: folder scanning, alignment manifests, image decoding, caches, samplers."""
