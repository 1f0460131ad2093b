"""bench_batch's model: the random-weight Qwen2.5-VL checkpoint written once with the bundled processor and
tokenizer (7B shapes, or tiny ones for the smoke run), the CPU memory cap that splits the smoke model between
memory and disk, and freeing a model's memory between parts.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch

from _common import TEXT_7B, TEXT_TINY, VISION_7B, VISION_TINY, log_stamped, random_model

log = log_stamped


def write_checkpoint(folder: Path, smoke: bool, vision: str) -> dict[str, Any]:
    """The random 7B-shaped (or tiny) checkpoint with the bundled processor, built on the GPU (CPU for smoke)."""
    from transformers import AutoProcessor

    from adaspark_cli.qa import bundled_model_dir

    processor = AutoProcessor.from_pretrained(bundled_model_dir())
    tok = processor.tokenizer
    text = dict(TEXT_TINY if smoke else TEXT_7B, bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    vis = VISION_TINY if (smoke or vision == "tiny") else VISION_7B
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    start = time.perf_counter()
    model = random_model(text, {**vis, "out_hidden_size": text["hidden_size"]}, device=device, dtype=dtype,
                         image_token_id=processor.image_token_id, video_token_id=processor.video_token_id,
                         vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                         vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    info = {"folder": str(folder), "parameters": params, "dtype": str(dtype), "vision": "tiny" if vis is VISION_TINY
            else "7b", "gb": sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e9,
            "write_s": time.perf_counter() - start}
    log(f"checkpoint: {params / 1e9:.2f} B parameters, {info['gb']:.1f} GB in {info['write_s']:.1f} s -> {folder}")
    return info


def smoke_cap(ckpt: Path) -> tuple[tuple[int | str, int], ...]:
    """A CPU memory cap that keeps some layers in memory and streams the others from disk (the smoke's split)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from adaspark_cli.placement import LAYER, DeviceMapSpec, Placement, plan_device_map

    config = AutoConfig.from_pretrained(ckpt)
    total = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    for percent in range(100, 10, -5):
        cap = (("cpu", total * percent // 100),)
        plan = Placement(plan_device_map(Qwen2_5_VLForConditionalGeneration, config, DeviceMapSpec("auto", cap),
                                         torch.float32))
        values = {plan.raw(LAYER.format(i)) for i in range(config.text_config.num_hidden_layers)}
        if values == {"cpu", "disk"}:
            return cap
    raise RuntimeError("no CPU cap splits the smoke model between memory and disk")


def release(*objects: Any) -> None:
    """Free what a part held (the caller's references must be gone too) before the next part loads a model."""
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
