"""Completion backends a language-model writer calls: an OpenAI-compatible server, a local transformers model, or a
directory of recorded completions, optionally behind an on-disk completion cache."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import torch

from dreamer.artifacts import write_json
from dreamer.config import resolve_device

if TYPE_CHECKING:
    import openai

BackendName = Literal["openai", "replay", "transformers"]
BACKENDS = get_args(BackendName)
PLACEHOLDER_API_KEY = "no-key"  # local servers (vLLM, Ollama, llama.cpp) ignore the key, but the client needs one


@dataclass(frozen=True)
class Request:
    """One chat completion to make."""

    messages: tuple[dict[str, str], ...]  # {"role": "system" | "user" | "assistant", "content": str}
    temperature: float
    top_p: float
    max_tokens: int
    seed: int  # sampling seed; candidates of one prompt differ by seed

    def to_json(self) -> dict[str, Any]:
        """The fields as plain JSON values (numbers normalized, so 1 and 1.0 are the same temperature)."""
        return {
            "messages": [dict(message) for message in self.messages],
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_tokens": int(self.max_tokens),
            "seed": int(self.seed),
        }


class Backend(Protocol):
    """Something that completes chats."""

    name: str  # e.g. "openai:qwen2.5-coder-32b@http://localhost:8000/v1"; used in cache keys and audit logs

    def complete(self, requests: list[Request]) -> list[str]:
        """The completions of `requests`, in request order."""
        ...


@dataclass(frozen=True)
class BackendConfig:
    """The `writer` config keys that pick and set up a backend (see `make_backend`)."""

    backend: BackendName
    model: str | None  # openai: the model name the endpoint serves; transformers: a local directory
    base_url: str | None  # openai: e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 (Ollama)
    api_key_env: str | None  # the env var holding the API key; None or an unset var: a placeholder key
    timeout_s: float  # per request
    max_retries: int  # retries with exponential backoff on connection errors, 429 and 5xx
    concurrency: int  # openai: requests in flight at once
    replay_dir: str | None  # replay: the directory of recorded completions
    device: str  # transformers: "auto" | "cpu" | "cuda" | ...
    cache_dir: str | None  # the completion cache directory; None: no cache


class OpenAIBackend:
    """Chat completions from an OpenAI-compatible server (vLLM, Ollama, llama.cpp, OpenAI), `concurrency` at once.

    The `openai` client retries connection errors, 429 and 5xx `max_retries` times with exponential backoff; an error
    that remains is a RuntimeError naming the server, the model and what happened. A server that rejects `seed` (HTTP
    400 mentioning it) is asked again without it.
    """

    def __init__(
        self, model: str, base_url: str | None, api_key: str, timeout_s: float, max_retries: int, concurrency: int
    ) -> None:
        import openai  # here: the client takes most of a second to import, and most runs never call a server

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=max_retries)
        self.model, self.timeout_s, self.max_retries, self.concurrency = model, timeout_s, max_retries, concurrency
        self.base_url = str(self.client.base_url).rstrip("/")
        self.name = f"openai:{model}@{self.base_url}"

    def complete(self, requests: list[Request]) -> list[str]:
        """The completions of `requests`, in request order."""
        if not requests:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(requests)), thread_name_prefix="openai") as pool:
            return list(pool.map(self._complete_one, requests))

    def _complete_one(self, request: Request) -> str:
        import openai

        arguments = {"model": self.model, **request.to_json()}
        try:
            try:
                response = self.client.chat.completions.create(**arguments)
            except openai.BadRequestError as error:
                if "seed" not in str(error).lower():
                    raise
                del arguments["seed"]
                response = self.client.chat.completions.create(**arguments)
        except openai.APIError as error:
            raise RuntimeError(self._explain(error)) from error
        return response.choices[0].message.content or ""

    def _explain(self, error: openai.APIError) -> str:
        """A message for an error the client gave up on, with what to check."""
        import openai

        retries = f"after {self.max_retries} retries"
        if isinstance(error, openai.APITimeoutError):
            return (
                f"{self.base_url} did not answer within {self.timeout_s} s {retries} (model {self.model!r}); "
                "set writer.timeout_s"
            )
        if isinstance(error, openai.APIConnectionError):
            return (
                f"could not reach {self.base_url} ({error.__cause__ or error}) {retries}; "
                f"is the server running? set writer.base_url (model {self.model!r})"
            )
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            message = f"{self.base_url} answered HTTP {status} for model {self.model!r}: {error.message}"
            if status in (408, 409, 429) or status >= 500:
                return f"{message} ({retries})"
            if status in (401, 403):
                return f"{message}; set writer.api_key_env to the name of the env var holding the API key"
            if status == 404:
                return f"{message}; check writer.model and writer.base_url"
            return message
        return f"{self.base_url} (model {self.model!r}): {error}"


class TransformersBackend:
    """Chat completions from a causal LM in a local directory (Hugging Face format), one request at a time.

    Each request is sampled with its own seed (the caller's torch RNG state is left as it was); temperature 0 is greedy.
    The tokenizer and model are loaded on first use.
    """

    def __init__(self, path: str | os.PathLike, device: str) -> None:
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise ValueError(
                f"writer.model={str(path)!r} must be a local directory with config.json; hub names are not downloaded"
            )
        try:
            self.device = resolve_device(device)
        except ValueError as error:
            raise ValueError(f"writer.device: {error}") from error
        self.name = f"transformers:{self.path.resolve()}"

    @cached_property
    def tokenizer(self) -> Any:
        """The tokenizer saved in `path`."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, local_files_only=True)

    @cached_property
    def model(self) -> Any:
        """The model saved in `path`, on `device`, in eval mode, in the dtype it was saved in."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype="auto")
        return model.to(self.device).eval()

    def prompt(self, messages: tuple[dict[str, str], ...]) -> str:
        """The text the model continues: the tokenizer's chat template, else "role: content" blocks."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return "".join(f"{message['role']}: {message['content']}\n\n" for message in messages) + "assistant: "

    def complete(self, requests: list[Request]) -> list[str]:
        """The completions of `requests`, in request order."""
        return [self._generate(request) for request in requests]

    @torch.inference_mode()
    def _generate(self, request: Request) -> str:
        tokenizer = self.tokenizer
        # a chat template writes its own special tokens (BOS ...); plain text gets the tokenizer's usual ones
        inputs = tokenizer(
            self.prompt(request.messages), return_tensors="pt", add_special_tokens=not tokenizer.chat_template
        ).to(self.device)
        if request.temperature > 0:
            sampling = {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p}
        else:
            sampling = {"do_sample": False}
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        devices = [] if self.device.type == "cpu" else [self.device]
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(request.seed)
            output = self.model.generate(
                **inputs, max_new_tokens=request.max_tokens, pad_token_id=pad_token_id, **sampling
            )
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _natural_key(path: Path) -> list[list[str | int]]:
    """Sort key of a relative path: part by part, runs of digits compared as numbers (2 < 10)."""
    return [[int(run) if run.isdigit() else run for run in re.split(r"(\d+)", part)] for part in path.parts]


class ReplayBackend:
    """Serves the recorded completions in a directory, one file per request, in call order across calls.

    The files are the `*.md` and `*.txt` under `directory`, recursively, in natural order of their relative paths
    (`2` before `10`). Where some are named `completion.md`/`.txt`, only those are served: a previous run's audit trail
    (`iter_1/candidate_1/completion.md` beside `prompt.md`) replays as it was recorded.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise ValueError(f"writer.replay_dir={str(directory)!r} is not a directory")
        files = [p for p in self.directory.rglob("*") if p.suffix in (".md", ".txt") and p.is_file()]
        completions = [p for p in files if p.stem == "completion"]
        self.files = sorted(completions or files, key=lambda p: _natural_key(p.relative_to(self.directory)))
        if not self.files:
            raise ValueError(f"writer.replay_dir={str(directory)!r} holds no *.md or *.txt completion files")
        self.served = 0
        self.name = f"replay:{self.directory.resolve()}"

    def complete(self, requests: list[Request]) -> list[str]:
        """The next `len(requests)` recorded completions."""
        end = self.served + len(requests)
        if end > len(self.files):
            raise RuntimeError(
                f"replay directory {self.directory} has {len(self.files)} completion files and {self.served} were "
                f"served; {len(requests)} more completions were asked for"
            )
        completions = [path.read_text() for path in self.files[self.served : end]]
        self.served = end
        return completions


class CachedBackend:
    """`inner` behind an on-disk cache: `<key>.json` per completion, the key a sha256 of the backend name and request.

    Misses go to `inner` as one batch. A corrupt cache file is a miss (with a warning) and is then overwritten.
    """

    def __init__(self, inner: Backend, cache_dir: str | os.PathLike) -> None:
        self.inner = inner
        self.cache_dir = Path(cache_dir).expanduser()
        self.name = inner.name
        self.hits = 0
        self.misses = 0

    def key(self, request: Request) -> str:
        """The sha256 (hex) of the canonical JSON of the backend name and the request."""
        fields = {"backend": self.name, "request": request.to_json()}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def complete(self, requests: list[Request]) -> list[str]:
        """The completions of `requests`, in request order: cached ones from disk, the rest from `inner`."""
        keys = [self.key(request) for request in requests]
        completions = [self._load(key) for key in keys]
        missing = [i for i, completion in enumerate(completions) if completion is None]
        self.hits += len(requests) - len(missing)
        self.misses += len(missing)
        if missing:
            for i, completion in zip(missing, self.inner.complete([requests[i] for i in missing]), strict=True):
                record = {"backend": self.name, "request": requests[i].to_json(), "completion": completion}
                write_json(self.cache_dir / f"{keys[i]}.json", record)
                completions[i] = completion
        return completions

    def _load(self, key: str) -> str | None:
        path = self.cache_dir / f"{key}.json"
        if not path.exists():
            return None
        try:
            completion = json.loads(path.read_text())["completion"]
            if not isinstance(completion, str):
                raise TypeError(f"completion is a {type(completion).__name__}, not a str")
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"corrupt completion cache file {path} ({error!r}); treating it as a miss", stacklevel=3)
            return None
        return completion


def make_backend(config: BackendConfig) -> Backend:
    """The backend `config` describes, behind a `CachedBackend` when `cache_dir` is set (except replay, which is
    already a recording). Bad values are ValueErrors naming `writer.<key>`."""
    if config.backend not in BACKENDS:
        raise ValueError(f"writer.backend={config.backend!r} is not one of {list(BACKENDS)}")
    if config.backend == "replay":
        if not config.replay_dir:
            raise ValueError("writer.replay_dir must be set when writer.backend=replay")
        return ReplayBackend(config.replay_dir)
    if not config.model:
        raise ValueError(f"writer.model must be set when writer.backend={config.backend}")
    backend: Backend
    if config.backend == "openai":
        if not config.timeout_s > 0:
            raise ValueError(f"writer.timeout_s={config.timeout_s!r} must be > 0")
        if config.max_retries < 0:
            raise ValueError(f"writer.max_retries={config.max_retries!r} must be >= 0")
        if config.concurrency < 1:
            raise ValueError(f"writer.concurrency={config.concurrency!r} must be >= 1")
        api_key = (os.environ.get(config.api_key_env) if config.api_key_env else None) or PLACEHOLDER_API_KEY
        backend = OpenAIBackend(
            config.model, config.base_url, api_key, config.timeout_s, config.max_retries, config.concurrency
        )
    else:
        backend = TransformersBackend(config.model, config.device)
    return backend if config.cache_dir is None else CachedBackend(backend, config.cache_dir)
