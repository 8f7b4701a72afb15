"""Format detection and signature extraction for uploaded model files.

A model file is data, never code: ONNX is accepted; pickle-based formats are refused with a
message on how to convert.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from modelworks.errors import UnsupportedFormat, ValidationFailed

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
# operator domains ONNX Runtime implements itself; anything else would need a custom-op library
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}

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
    path: Path, filename: str, task: str = "tensor", scratch: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """Return (format, signature) for the uploaded file at `path`, or raise a 4xx error."""
    from modelworks.archives import archive_kind

    with open(path, "rb") as fh:
        head = fh.read(16)
    sniff_unsafe(head, filename)
    if head.startswith(b"PK\x03\x04") and _zip_holds_pickle(path):
        raise _refuse_unsafe("PyTorch/TorchScript archive")
    if archive_kind(path) is not None:
        return "transformers", inspect_transformers(path, task, scratch or path.parent)
    return "onnx", inspect_onnx(path)


TEXT_TASKS = ("embeddings", "text-classification")


def inspect_transformers(path: Path, task: str, scratch: Path) -> dict[str, Any]:
    """A zip/tar of a Hugging Face folder: config.json, *.safetensors, tokenizer.json."""
    import json
    import shutil
    import tempfile

    from modelworks.archives import extract_archive

    if task not in TEXT_TASKS:
        raise ValidationFailed(
            "this upload is a Hugging Face model folder; its model needs the task 'embeddings' "
            "or 'text-classification' (modelworks models create NAME --task embeddings)"
        )
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix="inspect-"))
    try:
        members = extract_archive(path, tmp / "x")
        tops = {m.split("/", 1)[0] for m in members}
        root = next(iter(tops)) if len(tops) == 1 and all("/" in m for m in members) else ""
        files = [m[len(root) + 1 :] if root else m for m in members]
        unsafe = sorted(f for f in files if PurePosixPath(f).suffix.lower() in UNSAFE_SUFFIXES)
        if unsafe:
            raise _refuse_unsafe(f"the folder holds {unsafe[0]!r}; pickle-based weights") from None
        missing = [f for f in ("config.json", "tokenizer.json") if f not in files]
        if not any(f.endswith(".safetensors") for f in files):
            missing.append("*.safetensors")
        if missing:
            raise ValidationFailed(
                f"the model folder lacks {', '.join(missing)}; save it with "
                "model.save_pretrained(dir, safe_serialization=True) and "
                "tokenizer.save_pretrained(dir), then zip the folder"
            )
        from modelworks.runtimes.text import TextConfig

        cfg = TextConfig(tmp / "x" / root if root else tmp / "x")
        if not cfg.config:
            raise ValidationFailed("config.json is not a JSON object")
        try:
            json.loads(
                (tmp / "x" / root / "tokenizer.json").read_text()
                if root
                else (tmp / "x" / "tokenizer.json").read_text()
            )
        except (ValueError, UnicodeDecodeError):
            raise ValidationFailed("tokenizer.json is not valid JSON") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
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


def inspect_onnx(path: Path) -> dict[str, Any]:
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import _get_all_tensors

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError, TypeError):
        raise _not_onnx() from None
    graph = model.graph
    if model.ir_version <= 0 or not model.opset_import or not graph.output or not graph.node:
        raise _not_onnx()
    domains = {op.domain for op in model.opset_import} | {n.domain for n in graph.node}
    custom = sorted(d for d in domains if d not in STANDARD_DOMAINS)
    if custom:
        raise ValidationFailed(
            f"the model uses custom operator domains {custom}; only standard ONNX operators "
            "(and ONNX Runtime's built-in com.microsoft ops) are served"
        )
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        _check_external_location(location, tensor.name)
        # a single uploaded file has no sibling files: external weights cannot be present
        raise ValidationFailed(
            f"tensor {tensor.name!r} keeps its data in an external file {location!r}, which was "
            "not uploaded; save the model with its weights inside "
            "(onnx.save_model(m, path, save_as_external_data=False))"
        )
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


def _check_external_location(location: str, tensor: str) -> None:
    """External data must name a plain relative file inside the version's own folder."""
    bad = (
        not location
        or "\x00" in location
        or os.path.isabs(location)
        or PureWindowsPath(location).is_absolute()
        or PureWindowsPath(location).drive != ""
        or any(part == ".." for part in PureWindowsPath(location).parts)
        or any(part == ".." for part in PurePosixPath(location).parts)
    )
    if bad:
        raise ValidationFailed(
            f"tensor {tensor!r} points its external data outside the model's folder; "
            "external data must be a relative file name next to the model"
        )
