"""The training program: a dense phase, then a fine-tune with AdaSpark active; checkpoints and the log.

Phase 1 (dense) trains every weight with teacher forcing on the answer tokens only (the answer and its
``<|im_end|>``; the prompt's labels are -100), AdamW, bf16 autocast on CUDA, batches of videos of one length
(right-padded); with ``aux_weight`` the dense targets of `aux.py` are learned beside the answer (their heads
are not saved). Phase 2 (AdaSpark, method.md section 4: "light fine-tuning with the sparsity active")
continues from phase 1 with `sparsify(model, config)` enabled in every training forward: the reference
AdaS-Attn (masked SDPA over the selected cubes) and the gathered AdaS-FFN with mean compensation are
differentiable in the kept paths (selection itself is a hard, gradient-free choice); both take a
right-padded batch of videos of one length, each sequence selected and compensated on its own.

Training data is generated on the fly in memory (`data.py`, seeds disjoint from every `make_suite` seed).
Writes ``OUT/dense/`` and ``OUT/adaspark/`` (safetensors, float32 or --save-dtype, processor files, the
AdaSpark block in the second one's config.json) and ``OUT/train_log.json`` (losses per step).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..config import AdaSparkConfig
from .aux import AUX_HEADS_FILE, AuxHeads
from .data import Encoder, batches
from .losses import answer_accuracy, dense_loss, sparse_loss
from .presets import PRESETS, TrainConfig, build_model


def _lr_at(step: int, total: int, base: float, warmup: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine to 10 %; progress is the larger of steps done and phase time used."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = max((step - warmup) / max(1, total - warmup), time_fraction)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _vision_backward_works(model: Any, device: torch.device) -> bool:
    """One tiny forward and backward through the (fast) vision tower under autocast."""
    tower = model.model.visual
    width = tower.patch_embed.proj.weight[0].numel()
    x = torch.randn(2 * 8 * 8, width, device=device)
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = tower(x, grid_thw=torch.tensor([[2, 8, 8]], device=device), return_dict=True).pooler_output
        out.float().square().mean().backward()
    except RuntimeError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
    return True


def clipped_step(model: Any, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter] | None = None) -> bool:
    """Clip the gradient norm (of ``params``, default the model's) to 1 and step, unless it is not finite (then drop it)."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters() if params is None else params, 1.0)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        return False
    opt.step()
    return True


def _optimizer_step(model: Any, opt: torch.optim.Optimizer, record: dict[str, Any], where: str,
                    log: Callable[[str], None], params: list[torch.nn.Parameter] | None = None) -> bool:
    """`clipped_step`, counting and logging a skipped one: one bad batch must not turn every weight into NaN."""
    if clipped_step(model, opt, params):
        return True
    record["skipped_steps"] = record.get("skipped_steps", 0) + 1
    log(f"{where}: non-finite gradient, step skipped")
    return False


def _fmt(check: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in check.items())


@dataclass
class _Run:
    """What both phases share: the model and its encoder, the log record, the clock and its budget."""

    cfg: TrainConfig
    model: Any
    processor: Any
    encoder: Encoder
    device: torch.device
    record: dict[str, Any]
    log: Callable[[str], None]
    out_dir: Path | None
    start: float = field(default_factory=time.perf_counter)

    def over(self, fraction: float) -> bool:
        """Past `fraction` of the time budget (never, without one)."""
        budget = self.cfg.time_budget_s
        return budget is not None and time.perf_counter() - self.start > budget * fraction

    def check(self, key: str, *, state: Any = None, curriculum: bool = False) -> dict[str, float]:
        result = answer_accuracy(self.model, self.encoder, self.cfg, items=self.cfg.check_items, state=state,
                                 curriculum=curriculum)
        self.record[key] = result
        return result

    def save(self, name: str, adaspark: AdaSparkConfig | None) -> None:
        if self.out_dir is not None:
            save_checkpoint(self.model, self.processor, self.out_dir / name, adaspark=adaspark,
                            dtype=getattr(torch, self.cfg.save_dtype))


def _load_model(cfg: TrainConfig, dev: torch.device, log: Callable[[str], None]) -> tuple[Any, Any]:
    """A fresh `cfg.preset` model, or the `cfg.init` checkpoint to continue from, on `dev` in training mode."""
    if cfg.init:  # continue from a saved checkpoint (e.g. a curriculum stage or an earlier, time-limited run)
        from transformers import Qwen2_5_VLForConditionalGeneration

        from ..checkpoint.tiny import build_tiny_processor

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(cfg.init, dtype=torch.float32)
        processor = build_tiny_processor()
        log(f"initialised from {cfg.init}")
    else:
        model, processor = build_model(PRESETS[cfg.preset], seed=cfg.seed)
    model.to(dev).train()  # type: ignore[arg-type]  # transformers' wrapped .to hides nn.Module.to's signature
    if cfg.batched_vision:
        from ..adapters.vision import fast_vision

        fast_vision(model)
        if dev.type == "cuda" and not _vision_backward_works(model, dev):  # an older torch: no varlen backward
            fast_vision(model, backend="loop")
            log("varlen attention has no backward here: the vision tower loops over windows")
    return model, processor


def train(cfg: TrainConfig, out_dir: str | Path | None = None, *, device: str | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run both phases; save checkpoints under out_dir (if given). Returns the log (losses per step)."""
    start = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, processor = _load_model(cfg, dev, log)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {cfg.init or cfg.preset}: {n_params:,} parameters on {dev}")
    record: dict[str, Any] = {"config": {**asdict(cfg)}, "parameters": n_params, "device": str(dev),
                              "dense": [], "adaspark": []}
    run = _Run(cfg, model, processor, Encoder(processor, model.config), dev, record, log,
               None if out_dir is None else Path(out_dir), start)
    _dense_phase(run)
    _write_log(out_dir, record)
    if cfg.sparse_steps > 0:
        _sparse_phase(run)
    record["adaspark_steps"] = len(record["adaspark"])
    record["seconds"] = time.perf_counter() - start
    _write_log(out_dir, record)
    return record


def _dense_phase(run: _Run) -> None:
    """Phase 1: every weight, the model unmodified; saved before the final checks (a run killed later keeps it)."""
    cfg, record, log = run.cfg, run.record, run.log
    budget = cfg.time_budget_s
    params = list(run.model.parameters())
    heads = None
    if cfg.aux_weight > 0:  # dense targets beside the answer; the heads stay out of the checkpoint
        heads = _aux_heads(run)
        params += list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    stream = batches(run.encoder, cfg, cfg.seed, collated=True)
    share = _dense_share(cfg)
    dense_budget = None if budget is None else share * budget
    pad_id = run.encoder.tok.pad_token_id
    waited = 0.0  # seconds the GPU loop spent waiting for batches: is rendering the limit?
    try:
        for step in range(cfg.steps):
            if run.over(share):
                log(f"dense: time budget reached at step {step}")
                break
            frac = 0.0 if dense_budget is None else (time.perf_counter() - run.start) / dense_budget
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg.steps, cfg.lr, cfg.warmup, frac)
            t0 = time.perf_counter()
            batch = next(stream)
            waited += time.perf_counter() - t0
            parts: dict[str, float] = {}
            loss = dense_loss(run.model, batch, pad_id, run.device, heads=heads, aux_weight=cfg.aux_weight,
                              parts=parts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if _optimizer_step(run.model, opt, record, f"dense step {step}", log, params):
                record["dense"].append(parts["answer"])  # the answer loss alone: comparable with aux off
                for key in ("aux", "needle_token_acc", "state_acc"):
                    if key in parts:
                        record.setdefault(f"dense_{key}", []).append(parts[key])
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                recent = record["dense"][-cfg.log_every :] or [float("nan")]
                elapsed = time.perf_counter() - run.start
                log(f"dense step {step}: loss {sum(recent) / len(recent):.4f}" + _aux_summary(record, cfg.log_every)
                    + f" ({elapsed:.0f} s, {waited:.0f} s waiting for data)")
            if cfg.check_items and cfg.check_every and step and step % cfg.check_every == 0:
                _check_during_dense(run, step)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # keep what was learned: a one-shot GPU run
        if not record["dense"]:
            raise
        record["dense_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log(f"dense phase stopped: {record['dense_error']}")
    record["dense_steps"] = len(record["dense"])
    record["dense_data_wait_seconds"] = waited
    record["dense_seconds"] = time.perf_counter() - run.start
    run.save("dense", None)
    if heads is not None and run.out_dir is not None:  # beside the checkpoint, for a run continuing with --init
        torch.save(heads.state_dict(), run.out_dir / AUX_HEADS_FILE)
    if cfg.check_items:
        log(f"dense check (teacher-forced greedy, {cfg.check_items} items): {run.check('dense_check')}")
        if cfg.curriculum:
            check = run.check("dense_check_curriculum", curriculum=True)
            log(f"dense check on training videos (curriculum): {check}")


def _aux_heads(run: _Run) -> AuxHeads:
    """Fresh heads, or those a run before left beside the --init checkpoint (its folder's parent)."""
    heads = AuxHeads(run.model.config.text_config.hidden_size)
    saved = None if run.cfg.init is None else Path(run.cfg.init).parent / AUX_HEADS_FILE
    if saved is not None and saved.is_file():
        heads.load_state_dict(torch.load(saved, map_location="cpu"))
        run.log(f"auxiliary heads from {saved}")
    return heads.to(run.device)


def _aux_summary(record: dict[str, Any], last: int) -> str:
    """", aux L (needle tokens A %, state B %)" over the last steps: are the dense targets being learned?"""
    if not record.get("dense_aux"):
        return ""

    def mean(key: str) -> float:
        values = [v for v in record.get(key, [])[-last:] if v == v]  # NaN: no needle in that batch
        return sum(values) / len(values) if values else float("nan")

    return (f", aux {mean('dense_aux'):.4f} (needle tokens {mean('dense_needle_token_acc'):.0%}, "
            f"state {mean('dense_state_acc'):.0%})")


def _dense_share(cfg: TrainConfig) -> float:
    """The dense phase's share of the time budget: all of it when no AdaSpark phase follows."""
    return cfg.dense_share if cfg.sparse_steps > 0 else 1.0


def _check_during_dense(run: _Run, step: int) -> None:
    """The periodic check (--check-every): held-out-like items, and training-like ones for a curriculum."""
    for curriculum, key, where in ((False, "dense_checks", ""), (True, "dense_checks_curriculum", ", training videos")):
        if curriculum and not run.cfg.curriculum:
            continue
        check = answer_accuracy(run.model, run.encoder, run.cfg, items=run.cfg.check_items, curriculum=curriculum)
        run.record.setdefault(key, []).append({"step": step, **check})
        run.log(f"dense check at step {step}{where}: {_fmt(check)}")


def _sparse_phase(run: _Run) -> None:
    """Phase 2: the same weights fine-tuned with AdaSpark active (reference kernels: differentiable in the kept paths)."""
    from ..adapters.sparse import sparsify

    cfg, record, log = run.cfg, run.record, run.log
    budget = cfg.time_budget_s
    # exact per-token selection, differentiable in the kept paths; fast kernels are for inference
    state = sparsify(run.model, cfg.adaspark(), kernel="reference")
    if cfg.check_items:  # the training-free baseline: dense weights, AdaSpark on
        log(f"training-free adaspark check: {run.check('training_free_check', state=state)}")
    opt = torch.optim.AdamW(run.model.parameters(), lr=cfg.sparse_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sparse_cfg = replace(cfg, lengths=cfg.sparse_lengths or cfg.lengths, length_weights=None,
                         batch=cfg.sparse_batch or cfg.batch, aux_weight=0.0)  # sparse_loss reads the answer only
    sparse_stream = batches(run.encoder, sparse_cfg,
                            cfg.seed + 1)
    phase_start = time.perf_counter()
    phase_budget = None if budget is None else max(1.0, budget - (phase_start - run.start))
    for step in range(cfg.sparse_steps):
        if run.over(1.0):
            log(f"adaspark: time budget reached at step {step}")
            break
        frac = 0.0 if phase_budget is None else (time.perf_counter() - phase_start) / phase_budget
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.sparse_steps, cfg.sparse_lr, min(cfg.warmup, cfg.sparse_steps // 10 + 1), frac)
        opt.zero_grad(set_to_none=True)
        loss_value = sparse_loss(run.model, run.encoder, next(sparse_stream), state, cfg.cube, run.device)
        if _optimizer_step(run.model, opt, record, f"adaspark step {step}", log):
            record["adaspark"].append(loss_value)
        if step % cfg.log_every == 0 or step == cfg.sparse_steps - 1:
            recent = record["adaspark"][-cfg.log_every :]
            log(f"adaspark step {step}: loss {sum(recent) / len(recent):.4f} ({time.perf_counter() - run.start:.0f} s)")
    run.save("adaspark", cfg.adaspark())
    if cfg.check_items:
        log(f"adaspark check (sparse, {cfg.check_items} items): {run.check('adaspark_check', state=state)}")
        with state.override(enabled=False):
            log(f"adaspark weights run dense: {run.check('adaspark_dense_check')}")


def _write_log(out_dir: str | Path | None, record: dict[str, Any]) -> None:
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "train_log.json").write_text(json.dumps(record) + "\n", encoding="utf-8")


def save_checkpoint(model: Any, processor: Any, out: Path, *, adaspark: AdaSparkConfig | None,
                    dtype: torch.dtype | None = None) -> Path:
    """save_pretrained (safetensors) + processor; the AdaSpark block goes into config.json when given.

    The patched MLP forwards are instance attributes, so parameter names are the stock ones."""
    from ..checkpoint.convert import adaspark_block
    from ..checkpoint.load import quiet_hf_output
    from ..config import CONFIG_KEY

    out.mkdir(parents=True, exist_ok=True)
    was = next(model.parameters()).dtype
    if dtype is not None:
        model.to(dtype)
    model.config.dtype = dtype or was
    with quiet_hf_output():
        model.save_pretrained(out)
        processor.save_pretrained(out)
    if dtype is not None:
        model.to(was)
    if adaspark is not None:
        path = out / "config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data[CONFIG_KEY] = adaspark_block(adaspark, None)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out
