"""Checks on everything that enters the adapter registry (and so the serving path): names, base
models, LoRA adapters.

An adapter is admitted to the registry only if it is loadable by the engine *and* safe to load:

- weights in safetensors only; any pickle-based file (``.bin``, ``.pt``, ``.pth``, ``.pkl``,
  ``.ckpt``) in the directory rejects it, because unpickling runs arbitrary code;
- a peft LoRA config (no DoRA, no ``modules_to_save``: vLLM serves neither), rank at most the
  engine's ``max_lora_rank`` (fixed when the engine starts), target modules within what the engine
  supports;
- every tensor named and shaped for the base model (layer index, module, in/out features), finite:
  an adapter trained for another model, a truncated or corrupt file fails here, at publish, not
  in a replica at load time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"})
LLAMA_LORA_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
"""The Llama linear layers vLLM's LoRA kernels (and peft) serve."""
LORA_MODULES_BY_ARCHITECTURE: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": LLAMA_LORA_MODULES,  # Llama 2 and 3 (GQA: k/v narrower than q)
    "MistralForCausalLM": LLAMA_LORA_MODULES,
    "Qwen2ForCausalLM": LLAMA_LORA_MODULES,  # q/k/v carry biases, which LoRA leaves alone
}
"""The LoRA-able linear layers of each base-model architecture the registry validates adapters
for (``config.json``'s ``architectures``): same names and shapes in all three."""
OTHER_MODULES = frozenset({"embed_tokens", "lm_head"})
"""Layers these architectures also have, which peft could target but the engine serves no LoRA
on (rejected as unsupported, not as absent)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}(@[0-9]{1,9})?$")
_TENSOR = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)


class AdapterRejected(ValueError):
    """An adapter failed validation at publish; the message says which check and why."""


def check_adapter_name(name: str) -> str:
    """A registry name (``retro``): letters, digits, ``_.-``; no slash, so never a path."""
    if not _NAME.fullmatch(name) or ".." in name:  # fullmatch: $ accepts "a\n"
        raise ValueError(f"bad adapter name {name!r}: use letters, digits and _.- (max 64)")
    return name


def is_valid_model_name(name: str) -> bool:
    """A model requested over HTTP: an alias, a base model name or a version ``retro@3``."""
    return bool(_MODEL.fullmatch(name)) and ".." not in name


def model_hash(model_dir: str | Path) -> str:
    """sha256 over the base model's ``config.json`` and safetensors weights, in name order: the
    identity an adapter is bound to (the same architecture with other weights is another base)."""
    root = Path(model_dir)
    files = [root / "config.json", *sorted(root.glob("*.safetensors"))]
    if not files[0].is_file():
        raise FileNotFoundError(f"no config.json in base model directory {root}")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BaseShapes:
    """In and out features of each LoRA-able module of the base model, from its config."""

    num_layers: int
    features: dict[str, tuple[int, int]]  # module -> (in_features, out_features)
    architecture: str = "LlamaForCausalLM"

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> BaseShapes:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        architecture = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
        if architecture not in LORA_MODULES_BY_ARCHITECTURE:
            raise ValueError(
                f"{model_dir}: base model architecture {architecture!r} is not one whose "
                f"adapters the registry can check; supported: "
                f"{sorted(LORA_MODULES_BY_ARCHITECTURE)}"
            )
        hidden, inter = int(cfg["hidden_size"]), int(cfg["intermediate_size"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        features = {
            "q_proj": (hidden, heads * head_dim),
            "k_proj": (hidden, kv_heads * head_dim),
            "v_proj": (hidden, kv_heads * head_dim),
            "o_proj": (heads * head_dim, hidden),
            "gate_proj": (hidden, inter),
            "up_proj": (hidden, inter),
            "down_proj": (inter, hidden),
        }
        modules = LORA_MODULES_BY_ARCHITECTURE[architecture]
        features = {name: shape for name, shape in features.items() if name in modules}
        return cls(int(cfg["num_hidden_layers"]), features, architecture)


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    num_tensors: int


def validate_adapter(
    adapter_dir: str | Path,
    base: BaseShapes,
    max_lora_rank: int,
    supported_modules: frozenset[str] = LLAMA_LORA_MODULES,
) -> AdapterInfo:
    """Check a peft LoRA directory against the engine's limits and the base model; raise
    ``AdapterRejected`` naming the first failed check."""
    root = Path(adapter_dir)
    if not root.is_dir():
        raise AdapterRejected(f"{root} is not a directory")
    pickled = sorted(p.name for p in root.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        raise AdapterRejected(f"pickle-based files are never loaded: {pickled}; use safetensors")
    for required in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (root / required).is_file():
            raise AdapterRejected(f"missing {required} in {root}")
    cfg = _read_config(root / ADAPTER_CONFIG)
    rank, targets = _check_config(cfg, max_lora_rank, supported_modules, base)
    count = _check_tensors(root / ADAPTER_WEIGHTS, base, rank, set(targets))
    return AdapterInfo(rank, float(cfg.get("lora_alpha", rank)), targets, count)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterRejected(f"{ADAPTER_CONFIG} is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise AdapterRejected(f"{ADAPTER_CONFIG} must hold a JSON object")
    return cfg


def _check_config(
    cfg: dict[str, Any], max_rank: int, supported: frozenset[str], base: BaseShapes
) -> tuple[int, tuple[str, ...]]:
    if cfg.get("peft_type") != "LORA":
        raise AdapterRejected(f"peft_type must be LORA, got {cfg.get('peft_type')!r}")
    rank = cfg.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterRejected(f"LoRA rank r must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise AdapterRejected(f"LoRA rank {rank} exceeds the engine's max_lora_rank {max_rank}")
    targets = cfg.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterRejected("target_modules must be a non-empty list of module names")
    missing = sorted(set(targets) - set(base.features) - OTHER_MODULES)
    if missing:
        raise AdapterRejected(
            f"target modules {missing} are not modules of the base model ({base.architecture}: "
            f"{sorted(base.features)}); train the adapter for this base model"
        )
    unsupported = sorted(set(targets) - supported)
    if unsupported:
        raise AdapterRejected(f"target modules {unsupported} not supported by the engine")
    if cfg.get("modules_to_save"):
        raise AdapterRejected("modules_to_save is not supported by the serving engine")
    if cfg.get("use_dora"):
        raise AdapterRejected("DoRA adapters are not supported by the serving engine")
    return rank, tuple(sorted(targets))


def _check_tensors(path: Path, base: BaseShapes, rank: int, targets: set[str]) -> int:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            if not names:
                raise AdapterRejected("the safetensors file holds no tensors")
            for name in names:
                _check_tensor(name, f.get_tensor(name), base, rank, targets)
    except AdapterRejected:
        raise
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise AdapterRejected(f"corrupt safetensors file {path.name}: {exc}") from exc
    return len(names)


def _check_tensor(name: str, tensor: Any, base: BaseShapes, rank: int, targets: set[str]) -> None:
    match = _TENSOR.fullmatch(name)
    if match is None:
        raise AdapterRejected(f"unexpected tensor {name!r} (not a LoRA A/B weight of a layer)")
    layer, module, kind = int(match[1]), match[2], match[3]
    if module not in targets or module not in base.features:
        raise AdapterRejected(f"tensor {name!r} targets {module!r}, not in target_modules")
    if layer >= base.num_layers:
        raise AdapterRejected(f"tensor {name!r}: layer {layer} >= base's {base.num_layers}")
    fan_in, fan_out = base.features[module]
    want = (rank, fan_in) if kind == "A" else (fan_out, rank)
    if tuple(tensor.shape) != want:
        raise AdapterRejected(
            f"tensor {name!r} has shape {tuple(tensor.shape)}, the base model needs {want}: "
            "the adapter was trained for another base model or rank"
        )
    if not tensor.is_floating_point() or not math.isfinite(float(tensor.float().abs().sum())):
        raise AdapterRejected(f"tensor {name!r} is not a finite floating-point tensor")
