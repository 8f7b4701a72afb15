"""Protocol adapters at their standard paths: Open Inference Protocol v2 (`/v2`)."""
