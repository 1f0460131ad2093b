"""AdaSparkConfig: the settings of both sparse mechanisms, stored in a checkpoint's config.json.

The block lives under the key ``"adaspark"`` of ``config.json``; ``convert`` writes it, ``ask`` and
``profile`` read it, and command-line flags override single fields.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

FORMAT_VERSION = 1
CONFIG_KEY = "adaspark"
# A cube side of 64 tokens spans 128 frames in time or 1792 px in space, more than a frame has at any
# usual --max-pixels: a larger side only makes the cubes the whole video, i.e. attention dense.
MAX_CUBE_SIDE = 64
# keys older builds wrote that this one accepts and ignores (a checkpoint stays loadable): the reason each went
RETIRED_KEYS = {
    "decode_top_p": "sparse decode steps were removed (slower than dense decoding on every GPU measured); "
    "answers are decoded densely",
}


@dataclass(frozen=True)
class AdaSparkConfig:
    """Settings of AdaS-Attn and AdaS-FFN (method.md sections 1-4).

    cube: (t, h, w) in language-model tokens; one token covers 2 frames x 28x28 px in Qwen2.5-VL.
    attn_top_p: nucleus mass of the cube relevance distribution each video query attends (1.0 = dense).
    ffn_top_p: nucleus mass of the token-norm distribution in a cube that goes through the FFN (1.0 = dense).
    sparse_layers: language-model layer indices that are sparse; None means every layer.
    layer_top_p: per-layer (layer, attn_top_p, ffn_top_p) overrides of the two global values, sorted by
        layer, each layer sparse and listed once; None (the default) uses the global values everywhere.
        Written by `convert --target-reduction ... --per-layer`; in JSON {"layer": [attn, ffn], ...}.
    A block that still carries "decode_top_p" (sparse decode steps, removed 2026-12-01: slower than dense
    on every GPU measured) loads, the key ignored: answers are decoded densely (RETIRED_KEYS).
    """

    cube: tuple[int, int, int] = (2, 8, 8)
    attn_top_p: float = 0.9
    ffn_top_p: float = 0.7
    sparse_layers: tuple[int, ...] | None = None
    version: int = FORMAT_VERSION
    layer_top_p: tuple[tuple[int, float, float], ...] | None = None

    def __post_init__(self) -> None:
        validate_cube(self.cube)
        validate_top_p("attn_top_p", self.attn_top_p)
        validate_top_p("ffn_top_p", self.ffn_top_p)
        if self.sparse_layers is not None:
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in self.sparse_layers):
                raise ConfigError(
                    f"sparse_layers: expected non-negative layer indices, got {list(self.sparse_layers)}; "
                    "use e.g. --layers 0-27 or --layers 4,5,6"
                )
        if self.layer_top_p is not None:
            validate_layer_top_p(self.layer_top_p, self.sparse_layers)
        if self.version != FORMAT_VERSION:
            raise ConfigError(
                f"adaspark block has format version {self.version}, this adaspark reads version "
                f"{FORMAT_VERSION}; re-run `adaspark convert` with this version"
            )

    @property
    def cube_size(self) -> int:
        return self.cube[0] * self.cube[1] * self.cube[2]

    def is_layer_sparse(self, layer_idx: int) -> bool:
        return self.sparse_layers is None or layer_idx in self.sparse_layers

    def attn_top_p_for(self, layer_idx: int) -> float:
        """The layer's attn_top_p: its layer_top_p entry, else the global value."""
        for layer, attn, _ in self.layer_top_p or ():
            if layer == layer_idx:
                return attn
        return self.attn_top_p

    def ffn_top_p_for(self, layer_idx: int) -> float:
        """The layer's ffn_top_p: its layer_top_p entry, else the global value."""
        for layer, _, ffn in self.layer_top_p or ():
            if layer == layer_idx:
                return ffn
        return self.ffn_top_p

    def replace(self, **changes: Any) -> AdaSparkConfig:
        """A copy with the given fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cube": list(self.cube),
            "attn_top_p": self.attn_top_p,
            "ffn_top_p": self.ffn_top_p,
            "sparse_layers": None if self.sparse_layers is None else list(self.sparse_layers),
            # only when set, so that checkpoints without it stay readable by builds that predate the key
            **({} if self.layer_top_p is None else {"layer_top_p": {str(i): [a, f] for i, a, f in self.layer_top_p}}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaSparkConfig:
        """Strict parse: unknown keys and wrong types are errors, never silently dropped."""
        if not isinstance(data, dict):
            raise ConfigError(f"adaspark block must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"calibration"} - set(RETIRED_KEYS))
        if unknown:
            raise ConfigError(f"adaspark block has unknown keys {unknown}; known keys are {sorted(known)}")
        kwargs: dict[str, Any] = {}
        if "version" in data:
            kwargs["version"] = _expect_int("version", data["version"])
        if "cube" in data:
            cube = data["cube"]
            if not isinstance(cube, (list, tuple)) or len(cube) != 3:
                raise ConfigError(f"cube: expected three integers [t, h, w], got {cube!r}")
            kwargs["cube"] = tuple(_expect_int("cube", v) for v in cube)
        for key in ("attn_top_p", "ffn_top_p"):
            if key in data:
                kwargs[key] = _expect_float(key, data[key])
        if "sparse_layers" in data and data["sparse_layers"] is not None:
            layers = data["sparse_layers"]
            if not isinstance(layers, (list, tuple)):
                raise ConfigError(f"sparse_layers: expected a list of layer indices or null, got {layers!r}")
            kwargs["sparse_layers"] = tuple(_expect_int("sparse_layers", v) for v in layers)
        if "layer_top_p" in data and data["layer_top_p"] is not None:
            kwargs["layer_top_p"] = _parse_layer_top_p(data["layer_top_p"])
        return cls(**kwargs)


def validate_cube(cube: tuple[int, ...], name: str = "cube") -> None:
    """Three integers in 1..MAX_CUBE_SIDE; `name` (the flag or key) starts the message."""
    if len(cube) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in cube):
        shown = "x".join(map(str, cube)) if all(isinstance(v, int) for v in cube) else repr(cube)
        raise ConfigError(f"{name} {shown}: expected three positive integers TxHxW, e.g. --cube 2x8x8")
    if max(cube) > MAX_CUBE_SIDE:
        raise ConfigError(
            f"{name} {'x'.join(map(str, cube))}: each side must be at most {MAX_CUBE_SIDE} tokens ({2 * MAX_CUBE_SIDE} "
            f"frames in time, {28 * MAX_CUBE_SIDE} px in space); e.g. --cube 2x8x8"
        )


def validate_top_p(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or not 0.0 < value <= 1.0:
        raise ConfigError(f"{name}: expected a number in (0, 1], got {value!r}; 1.0 means dense")


def validate_layer_top_p(entries: Any, sparse_layers: tuple[int, ...] | None) -> None:
    """Per-layer overrides: a tuple of (layer, attn_top_p, ffn_top_p), sorted, each layer once and sparse."""
    if not isinstance(entries, tuple):
        raise ConfigError(f"layer_top_p: expected a tuple of (layer, attn_top_p, ffn_top_p), got {entries!r}")
    layers = []
    for entry in entries:
        if not isinstance(entry, tuple) or len(entry) != 3:
            raise ConfigError(f"layer_top_p: expected (layer, attn_top_p, ffn_top_p) entries, got {entry!r}")
        layer, attn, ffn = entry
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise ConfigError(f"layer_top_p: expected a non-negative layer index, got {layer!r}")
        validate_top_p(f"layer_top_p[{layer}] attn", attn)
        validate_top_p(f"layer_top_p[{layer}] ffn", ffn)
        if sparse_layers is not None and layer not in sparse_layers:
            raise ConfigError(
                f"layer_top_p sets layer {layer}, which is not in sparse_layers {list(sparse_layers)}; keep every "
                "layer it sets sparse (--layers), or set the top-p values globally (--top-p)"
            )
        layers.append(layer)
    if layers != sorted(set(layers)):
        raise ConfigError(f"layer_top_p: layers must be sorted and listed once, got {layers}")


def _parse_layer_top_p(value: Any) -> tuple[tuple[int, float, float], ...]:
    """JSON {"3": [attn, ffn], ...} -> ((3, attn, ffn), ...) sorted by layer."""
    if not isinstance(value, dict):
        raise ConfigError(f'layer_top_p: expected an object {{"layer": [attn_top_p, ffn_top_p]}} or null, got {value!r}')
    entries = []
    for key, pair in value.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"layer_top_p: key {key!r} is not a layer index") from None
        if str(layer) != key:
            raise ConfigError(f"layer_top_p: key {key!r} is not a layer index")
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"layer_top_p[{key}]: expected [attn_top_p, ffn_top_p], got {pair!r}")
        entries.append((layer, _expect_float(f"layer_top_p[{key}]", pair[0]), _expect_float(f"layer_top_p[{key}]", pair[1])))
    return tuple(sorted(entries))


def parse_cube(text: str, name: str = "cube") -> tuple[int, int, int]:
    """'2x8x8' -> (2, 8, 8); `name` (e.g. the flag) starts an error message."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r}; expected TxHxW with positive integers, e.g. 2x8x8") from None
    validate_cube(values, name)
    return values  # type: ignore[return-value]


def parse_layers(text: str, name: str = "layers") -> tuple[int, ...] | None:
    """'all' -> None; '0-3,8' -> (0, 1, 2, 3, 8)."""
    if text.strip().lower() == "all":
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                layers.extend(range(lo, hi + 1))
            else:
                layers.append(int(part))
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r}; expected 'all' or e.g. '0-3,8'") from None
    if any(i < 0 for i in layers):
        raise ConfigError(f"{name}: indices must be non-negative, got {text!r}")
    return tuple(sorted(set(layers)))


def _expect_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    return value


def _expect_float(name: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    return float(value)


def config_from_checkpoint(config_json: dict[str, Any]) -> AdaSparkConfig | None:
    """The checkpoint's ``"adaspark"`` block, validated, or None when it has none (a dense checkpoint)."""
    block = config_json.get(CONFIG_KEY)
    if block is None:
        return None
    try:
        return AdaSparkConfig.from_dict(block)
    except ConfigError as exc:
        raise ConfigError(f"the checkpoint's config.json {CONFIG_KEY!r} block is invalid: {exc}") from None


def merged_config(config_json: dict[str, Any], overrides: dict[str, Any] | None = None) -> tuple[AdaSparkConfig, str]:
    """The settings a checkpoint runs with: its ``"adaspark"`` block (else the defaults) with `overrides` (the
    fields the user set) applied, and where the base came from ("checkpoint" or "defaults")."""
    block = config_from_checkpoint(config_json)
    config = (block or AdaSparkConfig()).replace(**(overrides or {}))
    return config, "checkpoint" if block is not None else "defaults"
