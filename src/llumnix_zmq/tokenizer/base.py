"""The tokenizer protocol and the byte-level tokenizer of the ``sim`` engine and ``tiny`` model.

Byte tokenizer ids: 0..255 are raw bytes, 256 = BOS, 257 = EOS, 258 = PAD (vocab 259).
"""

from __future__ import annotations

from typing import Protocol, Sequence


class Tokenizer(Protocol):
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None

    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict]) -> str:
        """Prompt text for OpenAI-style ``messages`` (with the generation prompt appended)."""
        ...


class ByteTokenizer:
    BOS = 256
    EOS = 257
    PAD = 258

    vocab_size = 259
    eos_token_ids = (257,)
    bos_token_id = 256

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.BOS, *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i for i in ids if 0 <= i < 256)
        return data.decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict]) -> str:
        parts = [f"<|{m['role']}|>\n{m['content']}\n" for m in messages]
        return "".join(parts) + "<|assistant|>\n"


def load_tokenizer(engine: str, model: str) -> Tokenizer:
    """The tokenizer that matches ``engine``/``model`` (lazy imports for real models)."""
    if engine == "vllm" and model == "tiny":  # the vllm engine's tiny Llama has a BPE tokenizer
        from ..engine.vllm.tiny import build_tiny_llama, default_tiny_dir

        model = build_tiny_llama(default_tiny_dir())
    elif engine == "sim" or model in ("tiny", "sim"):
        return ByteTokenizer()
    from ..engine.torch.tokenizer import load_model_tokenizer  # needs the torch extra

    return load_model_tokenizer(model)
