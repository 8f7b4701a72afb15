"""Write a seeded CSV of press-line sensor readings with a failure label (the README's
training tour): `python examples/press_sensors_csv.py press-sensors.csv [ROWS]`.

Each row is one press stroke: its line, temperature (°C), vibration (mm/s) and hydraulic
pressure (bar), and whether the press failed within the next shift. Hot, shaking presses on
line B fail more often; a few readings are missing, as real sensors drop out."""

from __future__ import annotations

import csv
import sys

import numpy as np


def main(path: str, rows: int = 1200, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    lines = rng.choice(["A", "B", "C"], size=rows, p=[0.4, 0.3, 0.3])
    temperature = rng.normal(62, 6, rows)
    vibration = np.abs(rng.normal(3.0, 1.2, rows))
    pressure = rng.normal(180, 15, rows)
    risk = 0.35 * (temperature - 62) + 1.4 * (vibration - 3) + 1.5 * (lines == "B") - 0.5
    failed = rng.random(rows) < 1 / (1 + np.exp(-risk))
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["line", "temperature", "vibration", "pressure", "label"])
        for i in range(rows):
            temp = "" if rng.random() < 0.01 else f"{temperature[i]:.1f}"
            out.writerow(
                [
                    lines[i],
                    temp,
                    f"{vibration[i]:.2f}",
                    f"{pressure[i]:.0f}",
                    "fail" if failed[i] else "ok",
                ]
            )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1200)
