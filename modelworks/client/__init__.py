"""The Python SDK: `Client` (sync) and `AsyncClient`, over httpx. Never imports server code.

    client = modelworks.Client()          # reads MODELWORKS_URL and MODELWORKS_API_KEY
    client.create_model("pump-failure", task="tabular-classification", exist_ok=True)
    client.push("pump-failure", "model.onnx")  # or a Hugging Face folder: zipped for you
    client.set_alias("pump-failure", "production", 1)
    client.infer("pump-failure", {"sensors": [[0.2, 0.1, 0.5, 0.3]]})

Errors are the server's own exception classes (`modelworks.errors`), rebuilt from its
error envelope; `ServerUnreachable` when nothing answers at the URL.
"""

from modelworks.client._base import DEFAULT_TIMEOUT, DEFAULT_URL, UPLOAD_TIMEOUT, ServerUnreachable
from modelworks.client._clients import AsyncClient, Client

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "UPLOAD_TIMEOUT",
    "AsyncClient",
    "Client",
    "ServerUnreachable",
]
