"""Format detection and signature extraction for uploaded model files.

A model file is data, never code: ONNX is accepted; pickle-based formats are refused with a
message on how to convert. A Hugging Face folder may hold only data members, each checked by
content (folder_members); ONNX structure is checked by onnx_check before ONNX Runtime sees it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from modelworks.errors import UnsupportedFormat, ValidationFailed
from modelworks.registry.folder_members import check_members
from modelworks.settings import Settings

if TYPE_CHECKING:
    from modelworks.runtimes.text import TextConfig

ACCEPTED = [
    "ONNX (.onnx)",
    "Hugging Face folder (zip/tar of config.json, *.safetensors, tokenizer.json)",
]
ACCEPTED_TEXT = "; ".join(ACCEPTED)
CONVERT_HINT = (
    "export PyTorch models with torch.onnx.export, scikit-learn models with "
    "`modelworks convert` (skl2onnx), Keras/TensorFlow models with tf2onnx; save Hugging Face "
    "models with save_pretrained(dir, safe_serialization=True) and upload the folder zipped"
)
# what inspection assumes when a caller passes no limit: the setting's default
DEFAULT_MAX_TENSOR_ELEMENTS = int(Settings.model_fields["max_tensor_elements"].default)
UNSAFE_SUFFIXES = {
    ".pkl",
    ".pickle",
    ".joblib",
    ".pt",
    ".pth",
    ".bin",
    ".ckpt",
    ".h5",
    ".keras",
    ".npy",
    ".npz",
}

# ONNX TensorProto element type -> Open Inference Protocol datatype
ONNX_TO_OIP = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}


def _refuse_unsafe(kind: str) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"{kind} files are refused: loading them runs code. Accepted formats: {ACCEPTED_TEXT}. "
        f"To convert: {CONVERT_HINT}.",
        details={"accepted": ACCEPTED},
    )


def sniff_unsafe(head: bytes, filename: str) -> None:
    """Refuse pickle-like payloads by name or by their first bytes."""
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    if suffix in UNSAFE_SUFFIXES:
        raise _refuse_unsafe(f"'{suffix}' (pickle-based or framework-native)")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise _refuse_unsafe("pickle")
    if head.startswith(b"\x89HDF"):
        raise _refuse_unsafe("HDF5/Keras")
    if head.startswith(b"\x93NUMPY"):
        raise _refuse_unsafe("NumPy")


def _zip_holds_pickle(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(
                n.endswith((".pkl", "data.pkl")) or "/data/" in n for n in zf.namelist()[:1000]
            )
    except (zipfile.BadZipFile, OSError):
        return False


def detect_and_inspect(
    path: Path,
    filename: str,
    task: str = "tensor",
    scratch: Path | None = None,
    *,
    max_tensor_elements: int | None = None,
    max_extract_bytes: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """Return (format, signature) for the uploaded file at `path`, or raise a 4xx error.

    `max_tensor_elements` bounds declared input shapes (MODELWORKS_MAX_TENSOR_ELEMENTS) and
    `max_extract_bytes` the scratch space an archive may unpack to; None means the default.
    """
    from modelworks.archives import archive_kind

    with open(path, "rb") as fh:
        head = fh.read(16)
    sniff_unsafe(head, filename)
    if head.startswith(b"PK\x03\x04") and _zip_holds_pickle(path):
        raise _refuse_unsafe("PyTorch/TorchScript archive")
    if archive_kind(path) is not None:
        signature = inspect_transformers(
            path,
            task,
            scratch or path.parent,
            max_extract_bytes=max_extract_bytes,
            max_tensor_elements=max_tensor_elements,
        )
        return "transformers", signature
    return "onnx", inspect_onnx(path, max_tensor_elements=max_tensor_elements)


TEXT_TASKS = ("embeddings", "text-classification")


def _split_root(members: list[str]) -> tuple[str, list[str]]:
    """(top folder shared by every member or '', the member names below it)."""
    tops = {m.split("/", 1)[0] for m in members}
    if len(tops) == 1 and all("/" in m for m in members):
        root = next(iter(tops))
        return root, [m[len(root) + 1 :] for m in members]
    return "", members


def _check_folder(folder: Path, files: list[str], max_tensor_elements: int) -> None:
    """Pickles are 415 (they run code); other unaccepted or malformed members are 422."""
    unsafe = sorted(f for f in files if PurePosixPath(f).suffix.lower() in UNSAFE_SUFFIXES)
    if unsafe:
        raise _refuse_unsafe(f"the folder holds {unsafe[0]!r}; pickle-based weights")
    check_members(folder, files, max_tensor_elements)
    missing = [f for f in ("config.json", "tokenizer.json") if f not in files]
    if not any(f.endswith(".safetensors") for f in files):
        missing.append("*.safetensors")
    if missing:
        raise ValidationFailed(
            f"the model folder lacks {', '.join(missing)}; save it with "
            "model.save_pretrained(dir, safe_serialization=True) and "
            "tokenizer.save_pretrained(dir), then zip the folder"
        )


def inspect_transformers(
    path: Path,
    task: str,
    scratch: Path,
    *,
    max_extract_bytes: int | None = None,
    max_tensor_elements: int | None = None,
) -> dict[str, Any]:
    """A zip/tar of a Hugging Face folder: config.json, *.safetensors, tokenizer.json.

    It is unpacked (bounded by `max_extract_bytes`) into `scratch`, every member is checked
    against the allow-list and by content, and the scratch copy is removed again.
    """
    import shutil
    import tempfile

    from modelworks.archives import Limits, extract_archive
    from modelworks.runtimes.text import TextConfig
    from modelworks.store import temp_prefix

    if task not in TEXT_TASKS:
        raise ValidationFailed(
            "this upload is a Hugging Face model folder; its model needs the task 'embeddings' "
            "or 'text-classification' (modelworks models create NAME --task embeddings)"
        )
    limits = Limits() if max_extract_bytes is None else Limits(max_total_bytes=max_extract_bytes)
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix=temp_prefix("inspect")))
    try:
        root, files = _split_root(extract_archive(path, tmp / "x", limits))
        folder = tmp / "x" / root if root else tmp / "x"
        _check_folder(folder, files, max_tensor_elements or DEFAULT_MAX_TENSOR_ELEMENTS)
        cfg = TextConfig(folder)
        if not cfg.config:
            raise ValidationFailed("config.json is not a JSON object; save it with save_pretrained")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _text_signature(cfg, task, root)


def _text_signature(cfg: TextConfig, task: str, root: str) -> dict[str, Any]:
    text_in = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    sig: dict[str, Any] = {
        "inputs": text_in,
        "root": root,
        "max_length": cfg.max_length,
        "architectures": cfg.config.get("architectures") or [],
    }
    if task == "embeddings":
        sig["outputs"] = [{"name": "embedding", "datatype": "FP32", "shape": [-1, cfg.hidden_size]}]
        sig["dimensions"] = cfg.hidden_size
        sig["pooling"] = cfg.pooling
        sig["normalize"] = cfg.normalize
    else:
        labels = cfg.labels or ["LABEL_0", "LABEL_1"]
        sig["outputs"] = [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels)]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ]
        sig["labels"] = labels
    return sig


def _not_onnx() -> UnsupportedFormat:
    return UnsupportedFormat(
        f"the file is not a valid ONNX model. Accepted formats: {ACCEPTED_TEXT}. "
        f"To convert: {CONVERT_HINT}.",
        details={"accepted": ACCEPTED},
    )


def _dims(type_proto: Any) -> list[int]:
    shape = type_proto.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]


def inspect_onnx(path: Path, *, max_tensor_elements: int | None = None) -> dict[str, Any]:
    """Signature of an ONNX model, after checking every tensor, node, subgraph and function.

    `max_tensor_elements` bounds the element count of a fixed input shape (None: default).
    """
    import onnx
    from google.protobuf.message import DecodeError

    from modelworks.registry.onnx_check import check_declared_shapes, check_structure
    from modelworks.registry.onnx_sizes import check_computed_sizes

    with open(path, "rb") as fh:
        if fh.read(8)[4:] == b"ORTM":  # ONNX Runtime would load it as its own format, unchecked
            raise UnsupportedFormat(
                "ONNX Runtime's .ort format is not accepted; upload the .onnx model instead",
                details={"accepted": ACCEPTED},
            )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError, TypeError):
        raise _not_onnx() from None
    graph = model.graph
    if model.ir_version <= 0 or not model.opset_import or not graph.output or not graph.node:
        raise _not_onnx()
    limit = max_tensor_elements or DEFAULT_MAX_TENSOR_ELEMENTS
    check_structure(model, limit)
    check_declared_shapes(graph, limit)
    check_computed_sizes(model, limit)
    initializers = {i.name for i in graph.initializer}
    inputs = [
        {
            "name": i.name,
            "datatype": ONNX_TO_OIP.get(i.type.tensor_type.elem_type, "UNKNOWN"),
            "shape": _dims(i.type),
        }
        for i in graph.input
        if i.name not in initializers
    ]
    outputs = [
        {
            "name": o.name,
            "datatype": ONNX_TO_OIP.get(o.type.tensor_type.elem_type, "UNKNOWN"),
            "shape": _dims(o.type),
        }
        for o in graph.output
    ]
    return {
        "inputs": inputs,
        "outputs": outputs,
        "opset": max(
            (op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=0
        ),
        "producer": model.producer_name,
    }
