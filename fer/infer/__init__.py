"""Serving a fer model without torch: ONNX sessions, preprocessing, face detectors, video, drawing."""
