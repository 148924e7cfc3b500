"""Build a tiny random-weight Llama chat model (and optionally a LoRA adapter) on disk.

Used by the tests: it loads in vLLM on CPU in seconds and generates thousands of tokens a
second. Its text is gibberish, so tests use temperature 0, `max_tokens` and `ignore_eos`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}</s>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# Long enough that a stream can be cut mid-generation long before it would end by itself.
MAX_POSITIONS = 32768

_CORPUS = [
    "The capital of France is Paris.",
    "Ray Serve scales Python applications across a cluster.",
    "vLLM is a fast and easy-to-use library for LLM inference and serving.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
] * 20


def build_tiny_model(
    path: Path, *, num_heads: int = 2, num_kv_heads: int = 1, embedding: bool = False
) -> Path:
    """Write a tiny Llama (head_dim 64, CPU-attention compatible) with a BPE tokenizer.

    `embedding`: a Sentence Transformers embedding model, which vLLM serves with its pooling
    runner (chosen from the model's files), with Matryoshka dimensions declared so that
    `dimensions` may shorten its vectors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    if (path / "config.json").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)

    # <tool_call> tokens let vLLM's hermes tool parser load for this tokenizer.
    special = [
        "<unk>",
        "<s>",
        "</s>",
        "<|user|>",
        "<|assistant|>",
        "<|system|>",
        "<tool_call>",
        "</tool_call>",
    ]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    head_dim = 64
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=head_dim * num_heads,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    if embedding:
        _as_sentence_transformer(path, config.hidden_size)
    # vLLM reads the generation config; keep it minimal and deterministic.
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id})
    )
    return path


def _as_sentence_transformer(path: Path, dimension: int) -> None:
    """Sentence Transformers' files (last-token pooling, normalized), from which vLLM chooses its
    pooling runner, as for real embedding models built on a causal LM (e5-mistral, gte-Qwen);
    with Matryoshka dimensions declared."""
    modules = [
        {"idx": i, "name": str(i), "path": where, "type": f"sentence_transformers.models.{kind}"}
        for i, (where, kind) in enumerate(
            [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Normalize", "Normalize")]
        )
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": dimension, "pooling_mode_lasttoken": True})
    )
    (path / "2_Normalize").mkdir(exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "is_matryoshka": True}, indent=2))


def build_lora_adapter(model_path: Path, path: Path, *, rank: int = 8) -> Path:
    """Write a random (non-identity) LoRA adapter for the tiny model with peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").exists():
        return path
    torch.manual_seed(1)
    base = LlamaForCausalLM.from_pretrained(model_path)
    peft_model = get_peft_model(
        base,
        LoraConfig(r=rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    # Make the adapter's effect large enough to change greedy output of a random model.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(50.0)
    peft_model.save_pretrained(path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--lora", type=Path, default=None, help="also write a LoRA adapter here")
    args = parser.parse_args()
    build_tiny_model(args.path)
    if args.lora:
        build_lora_adapter(args.path, args.lora)
    print(args.path)
