"""`adaspark convert`: a dense Qwen2.5-VL or Qwen3-VL checkpoint plus an "adaspark" block in config.json.

The weights are never modified: the safetensors files (sharded like the source) are hard-linked when
OUT is on the same filesystem as SRC, else copied. Processor, tokenizer and other side files are copied.
The write is atomic: everything goes to a temporary directory beside OUT, which is renamed to OUT at
the end; on any error or interrupt the temporary directory is removed, so OUT either is complete or was
never touched. SRC is only read. An interrupt can still land after the rename, so a caller that catches
it asks `is_converted` whether OUT is complete.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CONFIG_KEY, AdaSparkConfig
from ..errors import CheckpointError, ConfigError
from ..limits import format_bytes
from .hub import CONFIG_NAME, resolve_model_path
from .load import SAFE_WEIGHTS_INDEX_NAME, read_config_json, verify_checkpoint

# Side files copied besides the weights and config.json (top level of SRC only; dot files skipped).
SIDE_FILE_PATTERNS = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.md", "LICENSE*", "NOTICE*")
SPACE_MARGIN = 16 << 20  # bytes kept free beyond what the copy needs
TMP_PREFIX = ".adaspark-tmp-"
OLD_PREFIX = ".adaspark-old-"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM)


@dataclass(frozen=True)
class ConvertResult:
    src: Path
    out: Path
    config: AdaSparkConfig
    calibration: dict[str, Any] | None
    weights: tuple[str, ...]  # weight file names, as in SRC
    linked: int  # weight files hard-linked
    copied: int  # weight files copied
    side_files: tuple[str, ...]
    bytes_written: int  # bytes of the files copied (links cost none)

    def to_json(self) -> dict[str, Any]:
        return {
            "src": str(self.src),
            "out": str(self.out),
            CONFIG_KEY: adaspark_block(self.config, self.calibration),
            "weights": list(self.weights),
            "linked": self.linked,
            "copied": self.copied,
            "side_files": list(self.side_files),
            "bytes_written": self.bytes_written,
        }


def adaspark_block(config: AdaSparkConfig, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The config.json block: the config's fields plus the calibration record (null when set by hand)."""
    return {**config.to_dict(), "calibration": calibration}


def read_calibration(config_json: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration record of a converted checkpoint's config.json (None when there is none)."""
    block = config_json.get(CONFIG_KEY)
    record = block.get("calibration") if isinstance(block, dict) else None
    return record if isinstance(record, dict) else None


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_convert_paths(src: str | Path, out: str | Path, *, force: bool) -> tuple[Path, Path, list[Path]]:
    """Resolve SRC (directory or hub id), verify it, and check OUT can be written; raises CheckpointError.

    Returns (SRC directory, OUT path, SRC weight files). Run before any long work (calibration).
    """
    path = resolve_model_path(str(src))
    weights = verify_checkpoint(path)
    out = Path(out).expanduser()
    if not out.name or out.name in (".", ".."):
        raise CheckpointError(f"OUT {out} must name a new directory, e.g. ./qwen2.5-vl-7b-adaspark")
    src_real, out_real = path.resolve(), out.resolve()
    if _is_within(out_real, src_real) or _is_within(src_real, out_real):
        raise CheckpointError(
            f"OUT {out} overlaps SRC {path}; convert never writes into its source: pick an OUT outside it"
        )
    if not out.parent.is_dir():
        raise CheckpointError(f"the folder {out.parent} for OUT does not exist; create it first")
    if os.path.lexists(out) and not force:
        raise CheckpointError(f"OUT {out} already exists; pass --force to replace it, or pick another OUT")
    _check_writable(out)
    return path, out, weights


def write_error(exc: OSError, out: Path) -> CheckpointError:
    """The one-line error for an OSError while writing OUT: a full disk, a read-only filesystem and a
    missing permission each have their own fix."""
    where = out.parent
    if exc.errno in _NO_SPACE:
        return CheckpointError(f"ran out of disk space while writing {out} ({exc.strerror}); nothing was written; free "
                               f"some space in {where} or pick an OUT on another disk")
    if exc.errno == errno.EROFS:
        return CheckpointError(f"cannot write {out}: {where} is on a read-only filesystem; nothing was written; pick "
                               "an OUT on a writable disk")
    if exc.errno in _NO_PERMISSION:
        return CheckpointError(f"cannot write {out}: no permission to write in {where} ({exc.strerror}); nothing was "
                               "written; pick an OUT in a folder you can write to")
    return CheckpointError(f"could not write {out} ({exc.strerror or exc}); nothing was written")


def _check_writable(out: Path) -> None:
    """Create and remove an empty folder beside OUT, so that a read-only or foreign folder fails before any
    long work (calibration), with the reason the system gives."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out.parent))
    except OSError as exc:
        raise write_error(exc, out) from None


def _check_layers(config: AdaSparkConfig, config_json: dict[str, Any]) -> None:
    text = config_json.get("text_config")
    n_layers = (text if isinstance(text, dict) else config_json).get("num_hidden_layers")
    if isinstance(n_layers, int) and config.sparse_layers and max(config.sparse_layers) >= n_layers:
        raise ConfigError(
            f"sparse layers {list(config.sparse_layers)} include an index past the model's {n_layers} layers; "
            f"use e.g. --layers 0-{n_layers - 1}"
        )


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _side_files(src: Path, weights: list[Path]) -> list[Path]:
    skip = {CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME} | {w.name for w in weights}
    files = []
    for entry in sorted(src.iterdir()):
        name = entry.name
        if name in skip or name.startswith(".") or not entry.is_file():
            continue
        if any(fnmatch.fnmatch(name, pattern) for pattern in SIDE_FILE_PATTERNS):
            files.append(entry)
    if (src / SAFE_WEIGHTS_INDEX_NAME).is_file():
        files.append(src / SAFE_WEIGHTS_INDEX_NAME)
    return files


def _check_space(out_parent: Path, weights: list[Path], side: list[Path]) -> None:
    linkable = all(_same_device(w, out_parent) for w in weights)
    need = sum(f.stat().st_size for f in side) + (0 if linkable else sum(w.stat().st_size for w in weights))
    free = shutil.disk_usage(out_parent).free
    if need + SPACE_MARGIN > free:  # a read-only folder was refused before (_check_writable): this is space
        raise CheckpointError(
            f"not enough disk space in {out_parent}: the converted checkpoint needs {format_bytes(need)} "
            f"({'weights linked' if linkable else 'weights copied: OUT is on another filesystem than SRC'}), "
            f"{format_bytes(free)} is free; free some space or pick an OUT on another disk"
        )


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link `src` (symlinks followed, as in the HF cache) to `dst`, else copy it; True when linked.

    `convert_checkpoint` places each file through this module-level name (tests interrupt a conversion here)."""
    real = os.path.realpath(src)
    try:
        os.link(real, dst)
        return True
    except OSError:
        shutil.copy2(real, dst)
        return False


def _copy(src: Path, dst: Path) -> None:
    shutil.copy2(os.path.realpath(src), dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def install_out(tmp: Path, out: Path, force: bool) -> None:
    """Rename `tmp` to `out`; an existing `out` (only with force) is moved aside first and removed after.

    `convert_checkpoint`'s last step, through this module-level name (tests interrupt a conversion here)."""
    if not os.path.lexists(out):
        os.rename(tmp, out)  # fails if OUT appeared meanwhile and is not an empty directory
        return
    if not force:
        raise CheckpointError(f"OUT {out} already exists; pass --force to replace it, or pick another OUT")
    old = Path(tempfile.mkdtemp(prefix=OLD_PREFIX, dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        if os.path.lexists(tmp):  # the rename did not happen: put the old OUT back
            os.rename(old, out)
        else:  # an interrupt landed just after the rename: OUT is the new one
            _remove(old)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    config: AdaSparkConfig,
    *,
    force: bool = False,
    calibration: dict[str, Any] | None = None,
) -> ConvertResult:
    """Write SRC's weights, processor files and config.json with an "adaspark" block to OUT, atomically.

    SRC: a checkpoint directory or a hub id (resolved through the HF cache; HF_HUB_OFFLINE honoured).
    OUT must not exist unless `force`; it must not overlap SRC. CheckpointError for a missing or
    SRC of an unsupported architecture, a missing or corrupt shard, too little disk space, or a failed write; on any
    error or KeyboardInterrupt nothing is left behind.
    """
    path, out, weights = check_convert_paths(src, out, force=force)
    side = _side_files(path, weights)
    _check_space(out.parent, weights, side)
    config_json = read_config_json(path)
    _check_layers(config, config_json)
    config_json[CONFIG_KEY] = adaspark_block(config, calibration)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{out.name}-", dir=out.parent))
    except OSError as exc:
        raise write_error(exc, out) from None
    linked = copied = 0
    written = 0
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; OUT gets a normal directory's mode
        for file in weights:
            if link_or_copy(file, tmp / file.name):
                linked += 1
            else:
                copied += 1
                written += file.stat().st_size
        for file in side:
            _copy(file, tmp / file.name)
            written += file.stat().st_size
        (tmp / CONFIG_NAME).write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
        for file in weights:
            if (tmp / file.name).stat().st_size != file.stat().st_size:
                raise CheckpointError(f"copy of {file.name} in {tmp} has the wrong size; check the disk and retry")
        verify_checkpoint(tmp)
        install_out(tmp, out, force)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(exc, out) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(
        src=path,
        out=out,
        config=config,
        calibration=calibration,
        weights=tuple(w.name for w in weights),
        linked=linked,
        copied=copied,
        side_files=tuple(f.name for f in side),
        bytes_written=written,
    )


def is_converted(src: str | Path, out: str | Path, config: AdaSparkConfig, calibration: dict[str, Any] | None) -> bool:
    """Whether OUT holds what `convert_checkpoint(src, out, config, calibration=...)` writes: SRC's config.json
    with this "adaspark" block, and SRC's weight and side files at their sizes. For a caller interrupted
    around the final rename, which cannot otherwise tell whether it happened."""
    try:
        path = resolve_model_path(str(src))
        out = Path(out).expanduser()
        expected = read_config_json(path)
        expected[CONFIG_KEY] = adaspark_block(config, calibration)
        if not (out / CONFIG_NAME).is_file() or read_config_json(out) != expected:
            return False
        weights = verify_checkpoint(path)
        files = [*weights, *_side_files(path, weights)]
        if any(not (out / f.name).is_file() or (out / f.name).stat().st_size != f.stat().st_size for f in files):
            return False
        verify_checkpoint(out)
    except (CheckpointError, ConfigError, OSError):
        return False
    return True
