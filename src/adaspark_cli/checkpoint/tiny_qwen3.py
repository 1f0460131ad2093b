"""A tiny random-weight Qwen3-VL checkpoint, laid out like the hub's, for tests (no network).

    from adaspark_cli.checkpoint.tiny_qwen3 import build_tiny_qwen3_checkpoint
    path = build_tiny_qwen3_checkpoint(tmp_dir)          # or moe=True for Qwen3VLMoeForConditionalGeneration
    model = Qwen3VLForConditionalGeneration.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)      # Qwen3VLProcessor

Config, generation config, preprocessor and video-preprocessor configs, the chat template, the tokenizer
files and the weights in safetensors shards with an index, as `Qwen/Qwen3-VL-8B-Instruct` ships them.
The tokenizer is the bundled model's (models/adaspark-synth-small: the same byte-level BPE with Qwen's
special tokens that `tiny.build_tiny_tokenizer` trains, read from disk instead of trained: 0.03 s against
~5 s). The processor is the real Qwen3VLProcessor with Qwen3-VL's patching (16 px, 2x2 merge, 2 frames);
the real chat template's user-turn format without tool calls and without a default system prompt
(Qwen3-VL has none). Every shrunken field carries the Qwen3-VL-8B value in a comment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tiny import CONTENT_TEMPLATE, SPECIAL_TOKENS, VOCAB_MULTIPLE, build_tiny_tokenizer, vision_token_ids

BUNDLED_TOKENIZER_DIR = Path(__file__).resolve().parents[3] / "models" / "adaspark-synth-small"

# Qwen/Qwen3-VL-8B-Instruct's chat template, tool calls and reasoning content left out
QWEN3_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    + CONTENT_TEMPLATE
    + "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_MIN_PIXELS = 32 * 32 * 4  # per video: 128 * 32 * 32 (Qwen3-VL's video_preprocessor_config.json)
TINY_MAX_PIXELS = 32 * 32 * 64  # per video: 768 * 32 * 32


def tiny_tokenizer() -> Any:
    """The bundled model's tokenizer (trained in code where the checkout's models/ is absent), Qwen3-VL template."""
    from transformers import AutoTokenizer

    if (BUNDLED_TOKENIZER_DIR / "tokenizer.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(BUNDLED_TOKENIZER_DIR)
    else:
        tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen3_processor(tokenizer: Any = None) -> Any:
    """Qwen3VLProcessor: Qwen2VL image processor and Qwen3VL video processor at 16 px, 2x2 merge, 2 frames."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = tokenizer or tiny_tokenizer()
    patching = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    half = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # Qwen3-VL's normalisation
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},  # 65536 / 16777216
        **patching, **half,
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": TINY_MIN_PIXELS, "longest_edge": TINY_MAX_PIXELS},  # 4096 / 786432 (whole video)
        cap_pixels_per_frame=True,  # set, so 5.24 does not warn on every call
        fps=2,
        **patching, **half,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=QWEN3_CHAT_TEMPLATE,
    )


def tiny_qwen3_config(
    tokenizer: Any, *, text_layers: int = 3, hidden_size: int = 64, vision_depth: int = 2,
    deepstack: tuple[int, ...] = (0, 1), moe: bool = False,
) -> Any:
    """Qwen3VLConfig (or Qwen3VLMoeConfig with moe=True) at tiny sizes."""
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = 16  # 128
    text_config: dict[str, Any] = {
        "vocab_size": -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE,  # 151936
        "hidden_size": hidden_size,  # 4096
        "intermediate_size": 2 * hidden_size,  # 12288
        "num_hidden_layers": text_layers,  # 36
        "num_attention_heads": 4,  # 32
        "num_key_value_heads": 2,  # 8
        "head_dim": head_dim,  # 128
        "hidden_act": "silu",
        "max_position_embeddings": 4096,  # 262144
        "rms_norm_eps": 1e-6,
        # interleaved M-RoPE over head_dim / 2 = 8 frequencies: [24, 20, 20] of 64 in 8B
        "rope_parameters": {
            "rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True
        },
        "bos_token_id": ids["<|endoftext|>"],  # 151643
        "eos_token_id": ids["<|im_end|>"],  # 151645
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    if moe:  # Qwen3-VL-30B-A3B
        text_config.update(
            num_experts=4,  # 128
            num_experts_per_tok=2,  # 8
            moe_intermediate_size=hidden_size,  # 768
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    vision_config = {
        "depth": vision_depth,  # 27
        "hidden_size": 32,  # 1152
        "num_heads": 2,  # 16
        "intermediate_size": 64,  # 4304
        "hidden_act": "gelu_pytorch_tanh",
        "out_hidden_size": hidden_size,  # 4096
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,  # 2304 (a 48 x 48 grid, resampled to each frame's)
        "deepstack_visual_indexes": list(deepstack),  # [8, 16, 24]
    }
    cls = Qwen3VLMoeConfig if moe else Qwen3VLConfig
    return cls(
        text_config=text_config,
        vision_config=vision_config,
        **vision_token_ids(ids),
        tie_word_embeddings=False,
    )


def _save_processor_like_the_hub(processor: Any, out_dir: Path) -> None:
    """The hub's files (preprocessor_config.json, video_preprocessor_config.json, chat_template.json and the
    tokenizer's), not the single processor_config.json that 5.24's ProcessorMixin.save_pretrained writes."""
    processor.image_processor.save_pretrained(out_dir)
    processor.video_processor.save_pretrained(out_dir)
    processor.tokenizer.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)  # the tokenizer's copy; the hub has chat_template.json
    template = json.dumps({"chat_template": QWEN3_CHAT_TEMPLATE}, indent=2) + "\n"
    (out_dir / "chat_template.json").write_text(template, encoding="utf-8")
    # AutoProcessor picks the class named here (the bundled tokenizer's files name Qwen2_5_VLProcessor)
    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "tokenizer_config.json"):
        path = out_dir / name
        data = json.loads(path.read_text(encoding="utf-8"))
        data["processor_class"] = "Qwen3VLProcessor"
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def build_tiny_qwen3_checkpoint(out_dir: Path, *, seed: int = 0, moe: bool = False, **sizes: Any) -> Path:
    """Write a tiny random-weight Qwen3-VL checkpoint (float32, safetensors shards) into ``out_dir``.

    Defaults: 3 text layers of width 64 (4 heads x 16, 2 KV heads, MLP 128; moe: 4 experts, 2 per
    token), a 2-block ViT of width 32 whose blocks 0 and 1 feed DeepStack into text layers 0 and 1.
    The global torch RNG state is left untouched."""
    import torch
    import transformers
    from transformers import GenerationConfig

    from .load import quiet_hf_output

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_qwen3_processor()
    tokenizer = processor.tokenizer
    config = tiny_qwen3_config(tokenizer, moe=moe, **sizes)
    config.dtype = torch.float32
    cls = getattr(transformers, "Qwen3VLMoeForConditionalGeneration" if moe else "Qwen3VLForConditionalGeneration")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config).to(torch.float32).eval()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with quiet_hf_output():
        model.save_pretrained(out_dir, max_shard_size=n_bytes // 2 + 1)  # shards and an index, as the hub's
        _save_processor_like_the_hub(processor, out_dir)
    info = {"builder": "adaspark_cli.checkpoint.tiny_qwen3.build_tiny_qwen3_checkpoint", "seed": seed, "moe": moe,
            "parameters": sum(p.numel() for p in model.parameters())}
    (out_dir / "README.md").write_text(
        "# Tiny random Qwen3-VL\n\nRandom weights, for tests only; answers are noise.\n\n```json\n"
        + json.dumps(info, indent=2) + "\n```\n", encoding="utf-8",
    )
    return out_dir
