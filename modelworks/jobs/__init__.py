"""Background work: converting uploads for serving (ONNX export); training and compression
jobs come later on the same footing."""
