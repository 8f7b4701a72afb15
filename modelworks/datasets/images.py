"""Image datasets: a zip of folders, one per class (`ok/0001.png`, `dent/0002.png`, …).

The zip is unpacked with the same safe extraction as model archives (no links, no paths out of
the folder, bytes and entries counted, so a zip bomb stops); each file must be an image Pillow
can open, within a pixel budget (decompression bombs)."""

from __future__ import annotations

import tempfile
import zipfile
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Any

from modelworks.datasets.common import Limits, shown
from modelworks.errors import ValidationFailed

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LAYOUT = "put the images in one folder per class: ok/0001.png, dent/0002.png, …"


def _skipped(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _labelled(names: list[str]) -> list[tuple[str, str]]:
    """(member, class) for each image of the archive; one wrapping folder is allowed."""
    kept = [n for n in names if not _skipped(n)]
    if not kept:
        raise ValidationFailed(f"the zip holds no images; {LAYOUT}")
    depth = {len(PurePosixPath(n).parts) for n in kept}
    tops = {PurePosixPath(n).parts[0] for n in kept}
    strip = 1 if depth == {3} and len(tops) == 1 else 0
    found = []
    for n in kept:
        parts = PurePosixPath(n).parts[strip:]
        if len(parts) != 2:
            raise ValidationFailed(f"{shown(n)} is not inside a class folder; {LAYOUT}")
        if PurePosixPath(n).suffix.lower() not in IMAGE_EXTENSIONS:
            raise ValidationFailed(
                f"{shown(n)} is not an image ({', '.join(IMAGE_EXTENSIONS)}); remove it from "
                "the zip"
            )
        found.append((n, parts[0]))
    classes = {c for _, c in found}
    if len(classes) < 2:
        raise ValidationFailed(
            f"the zip has {len(classes)} class folder; a classifier needs at least two"
        )
    return sorted(found)


def _open(data: bytes | Path, name: str, limits: Limits) -> tuple[int, int, str]:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    try:
        with Image.open(data if isinstance(data, Path) else BytesIO(data)) as img:
            width, height = img.size
            if width * height > limits.max_image_pixels:
                raise ValidationFailed(
                    f"{shown(name)} has {width}x{height} pixels; at most "
                    f"{limits.max_image_pixels} per image"
                )
            img.verify()
            return width, height, str(img.mode)
    except ValidationFailed:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValidationFailed(
            f"{shown(name)} has more than {limits.max_image_pixels} pixels"
        ) from None
    except Exception:  # Pillow raises many kinds for a damaged or foreign file
        raise ValidationFailed(
            f"{shown(name)} cannot be read as an image; remove or re-save it"
        ) from None


def image_items(path: Path, dest: Path, limits: Limits = Limits()) -> list[tuple[Path, str]]:
    """Unpack the image zip into the new folder `dest` (safely) and list (file, class)."""
    from modelworks.archives import Limits as ArchiveLimits
    from modelworks.archives import extract_archive

    budget = ArchiveLimits(
        max_entries=limits.max_images + 1000, max_total_bytes=limits.max_extract_bytes
    )
    names = extract_archive(path, dest, budget)
    items = _labelled(names)
    if len(items) > limits.max_images:
        raise ValidationFailed(f"the zip holds {len(items)} images; at most {limits.max_images}")
    return [(dest / n, c) for n, c in items]


def profile_images(path: Path, limits: Limits) -> dict[str, Any]:
    """Classes with their counts, image sizes and modes; every image opened once."""
    import warnings

    from PIL import Image

    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".images-") as tmp:
        items = image_items(path, Path(tmp) / "x", limits)
        counts: dict[str, int] = {}
        modes: dict[str, int] = {}
        low = [10**9, 10**9]
        high = [0, 0]
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            for file, cls in items:
                w, h, mode = _open(file, str(file.relative_to(Path(tmp) / "x")), limits)
                counts[cls] = counts.get(cls, 0) + 1
                modes[mode] = modes.get(mode, 0) + 1
                low = [min(low[0], w), min(low[1], h)]
                high = [max(high[0], w), max(high[1], h)]
    return {
        "format": "images",
        "rows": len(items),
        "columns": [{"name": "image", "type": "image"}, {"name": "label", "type": "string"}],
        "label": "label",
        "task": "classification",
        "classes": dict(sorted(counts.items())),
        "sizes": {"min": low, "max": high},
        "modes": dict(sorted(modes.items())),
        "entity": None,
        "entities": None,
        "time": None,
    }


def preview_images(path: Path, rows: int) -> dict[str, Any]:
    """The first images: path, class, width and height (read from the zip, not unpacked)."""
    limits = Limits()
    with zipfile.ZipFile(path) as zf:
        items = _labelled([i.filename for i in zf.infolist() if not i.is_dir()])[:rows]
        found = []
        for name, cls in items:
            with zf.open(name) as fh:
                data = fh.read(limits.max_extract_bytes)
            w, h, _ = _open(data, name, limits)
            found.append([name, cls, w, h])
    return {"columns": ["path", "label", "width", "height"], "rows": found}
