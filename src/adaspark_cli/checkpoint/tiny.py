"""A tiny, random-weight, but *complete* Qwen2.5-VL checkpoint for tests and offline development.

``build_tiny_checkpoint(out_dir)`` writes a directory that the stock transformers classes load with no
network access::

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out_dir)
    processor = AutoProcessor.from_pretrained(out_dir)

It holds ``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json`` +
``tokenizer_config.json``, ``processor_config.json``, ``chat_template.jinja`` and a ``README.md``. The files are
byte-identical from run to run for the same arguments (the BPE tokenizer is trained on a built-in
corpus, the weights are initialised under ``torch.manual_seed(seed)``).

Feeding decoded frames through the processor (transformers 5.24)
-----------------------------------------------------------------
Frames are a ``numpy.uint8`` array ``(N, H, W, 3)``; the processor needs one ``VideoMetadata`` per video
and ``do_sample_frames=False`` so it keeps exactly the frames given (the app samples them itself). ``fps``
is the rate of the frames passed (or give the source's ``total_num_frames``/``fps`` and the source indices
of the kept frames as ``frames_indices``: the processor uses ``len(frames_indices) / total_num_frames * fps``)::

    from transformers.video_utils import VideoMetadata

    messages = [{"role": "user", "content": [
        {"type": "video", "video": frames},          # the array itself, not a path
        {"type": "text", "text": "What color is the square?"},
    ]}]
    meta = VideoMetadata(total_num_frames=len(frames), fps=2.0, frames_indices=list(range(len(frames))))
    inputs = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True,
        processor_kwargs={"video_metadata": [meta], "do_sample_frames": False},
    )

or, equivalently, render the prompt first and call the processor::

    text = processor.apply_chat_template(messages, add_generation_prompt=True)   # a str
    inputs = processor(text=[text], videos=[frames], video_metadata=[meta],
                       do_sample_frames=False, return_tensors="pt")

Both give ``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` (2 on video tokens), each
``(1, L)``; ``pixel_values_videos`` ``(t*h*w, 3*2*14*14)`` float32; ``video_grid_thw`` ``(1, 3)`` = (t, h, w) in
frame pairs x 14-px patches; and ``second_per_grid_ts`` ``(1,)`` = temporal_patch_size / sampled fps, where
the sampled fps is ``len(frames_indices) / total_num_frames * fps`` (here 2 / 2.0 = 1.0 s per frame pair).
The number of ``<|video_pad|>`` tokens in ``input_ids`` is t*h*w / 4 (2x2 merge). With this checkpoint a
112x112 video of 8 frames gives ``video_grid_thw == [[4, 8, 8]]``: 4 frame pairs x a 4x4 grid of
language-model tokens (64 video tokens) after the 2x2 merge.

5.24 details: options for ``processor.apply_chat_template`` belong in ``processor_kwargs={...}`` (loose
``**kwargs`` still work but log a warning); without ``video_metadata`` the processor silently assumes 24 fps
(``second_per_grid_ts`` 2/24), which shifts the temporal M-RoPE positions; a frame count that is not a
multiple of 2 is padded by repeating the last frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "TINY_MAX_PIXELS",
    "TINY_MIN_PIXELS",
    "ModelSpec",
    "build_model",
    "build_tiny_checkpoint",
    "build_tiny_processor",
    "build_tiny_tokenizer",
    "model_config",
]

# Qwen2.5-VL's special tokens, in the order (and relative ids) of the real vocabulary, which puts them
# right after the BPE vocabulary (151643.. in Qwen2.5-VL). The 6 <|object_ref_*|>/<|box_*|>/<|quad_*|>
# grounding tokens of the real vocabulary are left out.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# A message's list content in Qwen's chat templates (Qwen2.5-VL and Qwen3-VL alike): images and videos as
# <|vision_start|><|image_pad|/video_pad|><|vision_end|>, optional "Picture n:"/"Video n:" ids, and text.
CONTENT_TEMPLATE = (
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
)

# The chat template of Qwen/Qwen2.5-VL-7B-Instruct (default system prompt, then the messages)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    + CONTENT_TEMPLATE
    + "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX): the
# tokenizer is trained with exactly the pipeline Qwen2Tokenizer rebuilds on load.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_BPE_VOCAB_SIZE = 480  # 256 byte symbols + 224 merges; 151643 in Qwen2.5-VL
VOCAB_MULTIPLE = 64  # embedding rows are padded to a multiple (Qwen2.5-VL-7B: 151665 tokens -> 152064 rows)

# Video pixel limits: 4..64 merged 28x28 cells per frame, so 112x112 frames -> a 4x4 token grid.
TINY_MIN_PIXELS = 28 * 28 * 4  # Qwen2.5-VL videos: 128 * 28 * 28
TINY_MAX_PIXELS = 28 * 28 * 64  # Qwen2.5-VL videos: 768 * 28 * 28

# A small English corpus for the BPE: questions about short videos and their answers.
_CORPUS = """
What is in the video? What happens in the video? What happens at the end of the video?
What color is the square? What color is the circle? What color is the triangle? What color is the ball?
Which shape moves to the left? Which shape moves to the right? Which way does the ball move?
Where is the red circle? Where is the blue square? Where does the green triangle go?
Who is in the video? Why does the ball stop? When does the light turn green? How many shapes are there?
How many objects move? How many times does the ball bounce? Is the square above or below the circle?
Does the circle move up or down? Does the box move left or right? Is there a person in the scene?
The square is red. The circle is blue. The triangle is green. The ball is yellow. The box is orange.
The star is purple. The line is black. The dot is white. The sky is gray. The door is brown. The flower is pink.
A red square moves to the left. A blue circle moves to the right. A green triangle moves up.
A yellow ball moves down. An orange box stays in the middle. A purple star turns around.
The ball moves from the left to the right and then back to the left.
The square moves up, then down, then up again. The circle moves down and stops.
Colors: red, green, blue, yellow, orange, purple, pink, brown, black, white, gray.
Shapes: square, circle, triangle, rectangle, star, line, dot, ball, box, cube, heart, arrow.
Directions: left, right, up, down, top, bottom, middle, center, front, back, above, below, near, far.
Numbers: zero, one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, twenty, hundred.
Digits: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 30 60 100 2025.
There are two squares and three circles. There is one triangle. There are four balls and five boxes.
The first frame shows a red square. The last frame shows a blue circle. The second clip is longer.
Answer with one word. Answer with a number. Answer yes or no. Yes. No. Maybe. I do not know.
The video shows a person walking to the door. A man opens the door. A woman sits at the table.
A dog runs across the room. A cat sleeps on the chair. A car drives down the road. A bird flies up.
The camera moves slowly to the left. The camera zooms in. The light is on. The screen is dark.
First the ball is small, then it is big. The shapes are moving fast. The scene is quiet and slow.
What time is it in the video? How long is the video? The video is ten seconds long.
Describe the video in one sentence. Summarize what happens. Count the objects on the table.
You are a helpful assistant. Please answer the question about the video.
system user assistant: the user asks, the assistant answers, the system sets the rules.
"""


def _train_bpe():
    """Byte-level BPE with Qwen2's normalizer/pre-tokenizer/decoder, trained on the built-in corpus."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = [line for line in _CORPUS.strip().splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    # Special tokens come after the BPE vocabulary, as in Qwen2.5-VL.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def build_tiny_tokenizer():
    """A Qwen2Tokenizer (transformers' fast, tokenizers-backed Qwen2 class) over the tiny byte-level BPE.

    eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos/unk (like Qwen2.5-VL-Instruct), Qwen2.5-VL chat template.
    """
    from transformers import Qwen2Tokenizer

    backend = _train_bpe()
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        bos_token=None,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,  # as Qwen2.5-VL-7B-Instruct: long videos exceed 4096 tokens
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_processor(tokenizer=None):
    """Qwen2_5_VLProcessor with Qwen2.5-VL's patching (14 px, 2x2 merge, 2 frames) and tiny pixel limits."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if tokenizer is None:
        tokenizer = build_tiny_tokenizer()
    patching = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessor(
        min_pixels=TINY_MIN_PIXELS,  # 3136 (= 56 * 56) in Qwen2.5-VL-7B's preprocessor_config.json
        max_pixels=TINY_MAX_PIXELS,  # 12845056 (= 28 * 28 * 16384)
        **patching,
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=TINY_MIN_PIXELS,  # 128 * 28 * 28 (qwen-vl-utils VIDEO_MIN_PIXELS, the class default)
        max_pixels=TINY_MAX_PIXELS,  # 768 * 28 * 28 (qwen-vl-utils VIDEO_MAX_PIXELS, the class default)
        # Bound a video's total pixels like qwen-vl-utils; set explicitly so 5.24 does not warn on every call.
        cap_pixels_per_frame=True,
        **patching,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of a Qwen2.5-VL built from scratch (the 7B values are in `model_config`'s comments).

    The defaults are the tiny checkpoint's; `adaspark_cli.train.PRESETS` holds the trained models' sizes."""

    text_layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    vision_depth: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vision_intermediate: int = 64
    max_positions: int = 4096
    full_attention_blocks: tuple[int, ...] | None = None  # vision blocks with full attention (None: the last)


class VisionTokenIds(TypedDict):
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int


def vision_token_ids(ids: dict[str, int]) -> VisionTokenIds:
    """The config's image / video / vision start / end token ids (Qwen2.5-VL's and Qwen3-VL's alike) from the
    tokenizer's `ids` (151655, 151656, 151652, 151653 in the real checkpoints)."""
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def model_config(tokenizer, spec: ModelSpec):
    """The `Qwen2_5_VLConfig` of `spec` with the tokenizer's special token ids."""
    from transformers import Qwen2_5_VLConfig

    if spec.hidden % spec.heads or (spec.hidden // spec.heads) % 2:
        raise ValueError(f"hidden {spec.hidden} must split into {spec.heads} heads of even size (rotary pairs)")
    # 3-D M-RoPE splits head_dim/2 rotary frequencies into (temporal, height, width) sections.
    half = spec.hidden // spec.heads // 2
    t = half // 4 or 1  # 7B: [16, 24, 24] for head_dim 128 (t = half/4, h = w = 3*half/8)
    h = (half - t) // 2
    mrope_section = [t, h, half - t - h]  # hidden 64 -> head_dim 16 -> [2, 3, 3]
    full_blocks = list(spec.full_attention_blocks or (spec.vision_depth - 1,))

    ids = {t_: tokenizer.convert_tokens_to_ids(t_) for t_ in SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    text_config = {
        "vocab_size": vocab_size,  # 152064
        "hidden_size": spec.hidden,  # 3584
        "intermediate_size": spec.intermediate,  # 18944
        "num_hidden_layers": spec.text_layers,  # 28
        "num_attention_heads": spec.heads,  # 28 (head_dim = hidden_size / heads: 128 in 7B; no head_dim field)
        "num_key_value_heads": spec.kv_heads,  # 4 (GQA)
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_positions,  # 128000
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "sliding_window": spec.max_positions,  # 32768
        "max_window_layers": spec.text_layers,  # 28
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope_section,  # [16, 24, 24]
        },
        "bos_token_id": ids["<|endoftext|>"],  # 151643
        "eos_token_id": ids["<|im_end|>"],  # 151645
        "pad_token_id": ids["<|endoftext|>"],  # 151643
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": spec.vision_depth,  # 32
        "hidden_size": spec.vision_hidden,  # 1280
        "num_heads": spec.vision_heads,  # 16
        "intermediate_size": spec.vision_intermediate,  # 3420
        "hidden_act": "silu",
        "out_hidden_size": spec.hidden,  # 3584
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": full_blocks,  # [7, 15, 23, 31]
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(  # type: ignore[call-arg]  # bos/eos/pad ids: config kwargs its typed signature omits
        text_config=text_config,
        vision_config=vision_config,
        **vision_token_ids(ids),
        bos_token_id=ids["<|endoftext|>"],  # 151643
        eos_token_id=ids["<|im_end|>"],  # 151645
        pad_token_id=ids["<|endoftext|>"],  # 151643
        tie_word_embeddings=False,
    )


def build_model(spec: ModelSpec, *, seed: int = 0):
    """A freshly initialised float32 Qwen2.5-VL of `spec` (greedy generation config) and the tiny processor.

    The global torch RNG state is left untouched."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    processor = build_tiny_processor()
    tokenizer = processor.tokenizer
    config = model_config(tokenizer, spec)
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)  # type: ignore[arg-type]  # transformers' wrapped .to hides nn.Module.to's signature
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,  # greedy: a random model's answers need no sampling settings
    )
    return model, processor


def build_tiny_checkpoint(
    out_dir: Path,
    *,
    seed: int = 0,
    text_layers: int = 2,
    hidden_size: int = 64,
    vision_depth: int = 2,
) -> Path:
    """Write a tiny random-weight Qwen2.5-VL checkpoint (float32 safetensors) into ``out_dir``; return it.

    Defaults: 2 text layers of width 64 (4 heads x 16, 2 KV heads, MLP 128), a 2-block ViT of width 32
    whose last block uses full attention, 488 tokens (512 embedding rows): 223,456 parameters, ~0.9 MB.
    The same arguments give byte-identical files. The global torch RNG state is left untouched.
    """
    from .load import quiet_hf_output

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = ModelSpec(text_layers=text_layers, hidden=hidden_size, intermediate=2 * hidden_size, vision_depth=vision_depth)
    model, processor = build_model(spec, seed=seed)
    model.eval()
    with quiet_hf_output():
        model.save_pretrained(out_dir)  # safetensors
        processor.save_pretrained(out_dir)
    _write_readme(out_dir, seed=seed, n_params=sum(p.numel() for p in model.parameters()))
    return out_dir


def _write_readme(out_dir: Path, *, seed: int, n_params: int) -> None:
    info = {"builder": "adaspark_cli.checkpoint.tiny.build_tiny_checkpoint", "seed": seed, "parameters": n_params}
    (out_dir / "README.md").write_text(
        "# Tiny random Qwen2.5-VL\n\nRandom weights, for tests only; answers are noise.\n\n```json\n"
        + json.dumps(info, indent=2)
        + "\n```\n",
        encoding="utf-8",
    )
