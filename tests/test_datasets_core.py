"""modelworks.datasets on files made here: each format profiled alike, time series, splits,
image zips and their bombs; the package imports no torch and no HTTP layer."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelworks.datasets import Limits, detect_format, image_items, preview, profile, split
from modelworks.errors import UnsupportedFormat, ValidationFailed


def frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "machine": [f"m{i % 6}" for i in range(n)],
            "t": np.arange(n),
            "temperature": np.round(rng.normal(60, 5, n), 2),
            "running": [i % 2 == 0 for i in range(n)],
            "label": ["fail" if i % 5 == 0 else "ok" for i in range(n)],
        }
    )


@pytest.fixture(params=["csv", "parquet", "jsonl"])
def written(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    df = frame()
    df.loc[3, "temperature"] = np.nan
    fmt = str(request.param)
    path = tmp_path / f"data.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=True)
    return path, fmt


def test_each_format_profiles_alike(written: tuple[Path, str]) -> None:
    path, fmt = written
    assert detect_format(path.name, path.read_bytes()[:8]) == fmt
    p = profile(path, fmt, entity="machine", time="t")
    types = {c["name"]: c["type"] for c in p["columns"]}
    assert types == {
        "machine": "string",
        "t": "integer",
        "temperature": "float",
        "running": "boolean",
        "label": "string",
    }
    missing = {c["name"]: c["missing"] for c in p["columns"]}
    assert missing["temperature"] == 1 and missing["label"] == 0
    assert (p["rows"], p["label"], p["task"]) == (60, "label", "classification")
    assert p["classes"] == {"fail": 12, "ok": 48}
    assert p["entities"] == 6
    t = next(c for c in p["columns"] if c["name"] == "t")
    assert (t["min"], t["max"], t["distinct"]) == (0, 59, 60)
    shown = preview(path, fmt, 2)
    assert shown["columns"] == list(frame().columns)
    assert shown["rows"][0][:2] == ["m0", 0] and len(shown["rows"]) == 2
    json.dumps(shown, allow_nan=False)  # NaN comes back as null


def test_label_rule(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    pd.DataFrame({"x": range(100), "target": [i * 1.5 for i in range(100)]}).to_csv(
        path, index=False
    )
    p = profile(path, "csv")
    assert (p["label"], p["task"], p["classes"]) == ("target", "regression", None)
    pd.DataFrame({"x": range(100), "grade": [i % 3 for i in range(100)]}).to_csv(path, index=False)
    p = profile(path, "csv", label="grade")
    assert p["task"] == "classification" and p["classes"] == {"0": 34, "1": 33, "2": 33}


def test_time_series_needs_both_columns_and_a_time(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    frame().to_csv(path, index=False)
    with pytest.raises(ValidationFailed, match="both"):
        profile(path, "csv", entity="machine")
    with pytest.raises(ValidationFailed, match="time column 'label'"):
        profile(path, "csv", entity="machine", time="label")
    with pytest.raises(ValidationFailed, match="'nope' is not in the file"):
        profile(path, "csv", label="nope")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"a": 1}\n[1, 2]\n', "line 2 .* not a JSON object"),
        (b'{"a": 1}\n{"a": \n', "line 2 .* not JSON"),
        (b'{"a": 1}\n{"a": {"b": 2}}\n', "nested"),
        (b'{"a": 1}\n{"b": 2}\n', "same keys"),
        (b'{"a": "caf\xe9"}\n', "not UTF-8"),
    ],
)
def test_bad_jsonl(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValidationFailed, match=match):
        profile(path, "jsonl")


def test_bad_parquet_and_unknown_formats(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not really parquet PAR1")
    with pytest.raises(ValidationFailed, match="parquet file cannot be read"):
        profile(path, "parquet")
    with pytest.raises(UnsupportedFormat, match="CSV"):
        detect_format("model.onnx", b"\x08\x07")


def test_long_cells_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label\n" + "x" * 200 + ",y\nb,z\n")
    with pytest.raises(ValidationFailed, match="line 2: a value in column 'a' is longer"):
        profile(path, "csv", limits=Limits(max_cell_bytes=100))


def test_a_negative_number_is_no_formula(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n-3,+4.5e2,x\n-1,2,y\n")
    p = profile(path, "csv")
    assert [c["type"] for c in p["columns"]] == ["integer", "float", "string"]


def test_split_is_deterministic_disjoint_and_covering() -> None:
    a, b = split(1000, 7), split(1000, 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], split(1000, 8)["train"])
    joined = np.concatenate(list(a.values()))
    assert sorted(joined.tolist()) == list(range(1000))
    assert [len(v) for v in a.values()] == [800, 100, 100]
    tiny = split(2, 0)
    assert len(tiny["train"]) >= 1
    with pytest.raises(ValueError):
        split(10, 0, (0.5, 0.4, 0.2))


def test_grouped_split_keeps_each_group_in_one_split() -> None:
    groups = [f"m{i % 17}" for i in range(1000)]
    parts = split(1000, 3, groups=groups)
    seen = {name: {groups[i] for i in idx} for name, idx in parts.items()}
    assert not seen["train"] & seen["validation"]
    assert not seen["train"] & seen["test"]
    assert not seen["validation"] & seen["test"]
    assert all(parts[k].size for k in parts)
    assert abs(len(parts["train"]) - 800) < 120


def png(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def test_image_zip_in_a_wrapping_folder(tmp_path: Path) -> None:
    path = tmp_path / "parts.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("ok", "dent"):
            for i in range(2):
                zf.writestr(f"parts/{cls}/{i}.png", png((10, 20, 30)))
        zf.writestr("__MACOSX/parts/._x", b"junk")
    p = profile(path, "images")
    assert p["classes"] == {"dent": 2, "ok": 2} and p["sizes"] == {"min": [8, 8], "max": [8, 8]}
    items = image_items(path, tmp_path / "out")
    assert [c for _, c in items] == ["dent", "dent", "ok", "ok"]
    assert all(f.is_file() for f, _ in items)


@pytest.mark.parametrize(
    ("members", "limits", "match"),
    [
        ({"ok/a.png": "png", "a.png": "png"}, Limits(), "not inside a class folder"),
        ({"ok/a.png": "png", "dent/a.txt": b"hi"}, Limits(), "is not an image"),
        ({"ok/a.png": "png", "dent/b.png": b"garbage"}, Limits(), "cannot be read as an image"),
        ({"ok/a.png": "png", "ok/b.png": "png"}, Limits(), "at least two"),
        ({"ok/a.png": "big", "dent/b.png": "png"}, Limits(max_image_pixels=1000), "pixels"),
    ],
)
def test_bad_image_zips(
    tmp_path: Path, members: dict[str, object], limits: Limits, match: str
) -> None:
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            if data == "png":
                data = png((0, 0, 0))
            elif data == "big":
                data = png((0, 0, 0), (100, 100))
            assert isinstance(data, bytes)
            zf.writestr(name, data)
    with pytest.raises(ValidationFailed, match=match):
        profile(path, "images", limits=limits)


def test_a_zip_bomb_stops(tmp_path: Path) -> None:
    from modelworks.errors import ModelworksError

    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok/a.png", png((0, 0, 0)))
        zf.writestr("dent/b.png", b"\0" * 50_000_000)
    with pytest.raises(ModelworksError) as info:
        profile(path, "images", limits=Limits(max_extract_bytes=1_000_000))
    assert info.value.status in (413, 422)
    assert not any(tmp_path.glob(".images-*"))  # the scratch folder went too


def test_the_package_imports_no_torch_and_no_http_layer() -> None:
    code = (
        "import sys, modelworks.datasets as d; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('modelworks.api')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
