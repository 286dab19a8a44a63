import json
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from openai_server import OpenAIServer
from tiny_lm import build_tiny_causal_lm

from dreamer.config import build
from dreamer.writers.backends import (
    PLACEHOLDER_API_KEY,
    BackendConfig,
    CachedBackend,
    OpenAIBackend,
    ReplayBackend,
    Request,
    TransformersBackend,
    make_backend,
)

SETTINGS = {
    "backend": "openai",
    "model": "tiny-coder",
    "base_url": None,
    "api_key_env": None,
    "timeout_s": 5.0,
    "max_retries": 2,
    "concurrency": 4,
    "replay_dir": None,
    "device": "cpu",
    "cache_dir": None,
}


def config(**overrides) -> BackendConfig:
    """A BackendConfig built the way the writer section is, with `overrides`."""
    return build(BackendConfig, {**SETTINGS, **overrides}, "writer")


def request(text: str = "write a sim", seed: int = 0, **fields) -> Request:
    messages = ({"role": "system", "content": "You write simulators."}, {"role": "user", "content": text})
    return Request(**{"messages": messages, "temperature": 0.7, "top_p": 0.95, "max_tokens": 64, "seed": seed} | fields)


# --- openai ----------------------------------------------------------------------------------------------------------


def test_openai_sends_the_request_and_returns_the_completion():
    with OpenAIServer(["```python\nx = 1\n```"]) as server:
        backend = make_backend(config(base_url=server.base_url))
        assert backend.complete([request(seed=3)]) == ["```python\nx = 1\n```"]
    assert backend.name == f"openai:tiny-coder@{server.base_url}"
    (body,) = server.requests
    assert body["model"] == "tiny-coder"
    assert body["messages"] == list(request().messages)
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.95, 64, 3)


def test_openai_keeps_request_order_with_requests_in_flight_together():
    in_flight, most = 0, 0
    lock = threading.Lock()

    def reply(body):  # later requests answer sooner, so they finish out of order
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        time.sleep(0.05 * (4 - body["seed"] % 4))
        with lock:
            in_flight -= 1
        return f"completion {body['seed']}"

    with OpenAIServer(reply) as server:
        backend = make_backend(config(base_url=server.base_url, concurrency=4))
        assert backend.complete([request(seed=s) for s in range(8)]) == [f"completion {s}" for s in range(8)]
    assert most > 1


def test_openai_retries_server_errors():
    with OpenAIServer(["fine"], statuses=[500, 500]) as server:
        assert make_backend(config(base_url=server.base_url, max_retries=2)).complete([request()]) == ["fine"]
    assert len(server.requests) == 3


def test_openai_gives_up_after_retries_with_the_status():
    with OpenAIServer(["never"], statuses=[503, 503]) as server:
        backend = make_backend(config(base_url=server.base_url, max_retries=1))
        with pytest.raises(RuntimeError, match=r"answered HTTP 503 for model 'tiny-coder'.*after 1 retries"):
            backend.complete([request()])


def test_openai_names_the_server_when_it_is_not_running():
    with OpenAIServer([]) as server:
        base_url = server.base_url  # nothing listens there once the server is closed
    backend = make_backend(config(base_url=base_url, max_retries=1, timeout_s=1.0))
    with pytest.raises(RuntimeError, match="could not reach") as error:
        backend.complete([request()])
    assert base_url in str(error.value) and "after 1 retries" in str(error.value)
    assert "is the server running? set writer.base_url" in str(error.value)


def test_openai_asks_again_without_seed_when_the_server_rejects_it():
    with OpenAIServer(["no seed"], reject_seed=True) as server:
        assert make_backend(config(base_url=server.base_url)).complete([request()]) == ["no seed"]
    assert ["seed" in body for body in server.requests] == [True, False]


def test_openai_returns_empty_text_for_null_content():
    with OpenAIServer(lambda body: None) as server:
        assert make_backend(config(base_url=server.base_url)).complete([request()]) == [""]


def test_openai_reads_the_api_key_from_the_named_env_var(monkeypatch):
    monkeypatch.setenv("DREAMER_TEST_KEY", "sk-secret")
    monkeypatch.delenv("DREAMER_UNSET_KEY", raising=False)
    with OpenAIServer(["a", "b", "c"]) as server:
        for env in ("DREAMER_TEST_KEY", "DREAMER_UNSET_KEY", None):
            make_backend(config(base_url=server.base_url, api_key_env=env)).complete([request()])
    keys = [headers["authorization"] for headers in server.headers]
    assert keys == ["Bearer sk-secret", f"Bearer {PLACEHOLDER_API_KEY}", f"Bearer {PLACEHOLDER_API_KEY}"]


def test_openai_backend_is_what_make_backend_builds():
    assert isinstance(make_backend(config(base_url="http://127.0.0.1:9/v1")), OpenAIBackend)


# --- transformers ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def tiny_lm_without_template(tmp_path_factory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm_plain"), chat_template=False)


def test_transformers_samples_per_request_seed(tiny_lm):
    backend = make_backend(config(backend="transformers", model=str(tiny_lm)))
    assert isinstance(backend, TransformersBackend)
    first = backend.complete([request(seed=seed, temperature=1.0, max_tokens=12) for seed in (0, 1)])
    again = backend.complete([request(seed=0, temperature=1.0, max_tokens=12)])
    assert all(isinstance(text, str) and text for text in first)
    assert again == first[:1]
    assert first[0] != first[1]


def test_transformers_is_greedy_at_temperature_zero(tiny_lm):
    backend = TransformersBackend(tiny_lm, "cpu")
    greedy = [backend.complete([request(seed=seed, temperature=0.0, max_tokens=8)]) for seed in (0, 1)]
    assert greedy[0] == greedy[1]


def test_transformers_uses_the_chat_template_else_role_blocks(tiny_lm, tiny_lm_without_template):
    templated = TransformersBackend(tiny_lm, "cpu")
    assert templated.prompt(request("hi").messages) == (
        "<s><|system|>\nYou write simulators.</s>\n<|user|>\nhi</s>\n<|assistant|>\n"
    )
    plain = TransformersBackend(tiny_lm_without_template, "cpu")
    assert plain.prompt(request("hi").messages) == "system: You write simulators.\n\nuser: hi\n\nassistant: "
    assert isinstance(plain.complete([request(max_tokens=4)])[0], str)


def test_transformers_refuses_a_path_that_is_not_a_local_model(tmp_path):
    with pytest.raises(ValueError, match="writer.model='Qwen/Qwen2.5-Coder-7B'.*hub names are not downloaded"):
        make_backend(config(backend="transformers", model="Qwen/Qwen2.5-Coder-7B"))
    with pytest.raises(ValueError, match="writer.model"):
        make_backend(config(backend="transformers", model=str(tmp_path)))


# --- replay ----------------------------------------------------------------------------------------------------------


def test_replay_serves_files_in_natural_order_across_calls(tmp_path):
    for name in ["10.md", "2.md", "1.txt", "notes.json"]:
        (tmp_path / name).write_text(f"from {name}")
    backend = make_backend(config(backend="replay", replay_dir=str(tmp_path), cache_dir=str(tmp_path / "cache")))
    assert isinstance(backend, ReplayBackend)  # replay is never cached
    assert backend.complete([request(), request()]) == ["from 1.txt", "from 2.md"]
    assert backend.complete([request()]) == ["from 10.md"]
    with pytest.raises(RuntimeError, match=rf"{tmp_path} has 3 completion files and 3 were served; 1 more"):
        backend.complete([request()])


def test_replay_reads_an_audit_trail_recursively(tmp_path):
    for it in (1, 2, 10):
        for candidate in (1, 2, 10):
            folder = tmp_path / f"iter_{it}" / f"candidate_{candidate}"
            folder.mkdir(parents=True)
            (folder / "completion.md").write_text(f"{it}.{candidate}")
            (folder / "prompt.md").write_text("## user\n\nwrite a sim")  # recorded beside it, not served
    served = ReplayBackend(tmp_path).complete([request()] * 9)
    assert served == [f"{it}.{c}" for it in (1, 2, 10) for c in (1, 2, 10)]


def test_replay_refuses_a_missing_or_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="writer.replay_dir=.*is not a directory"):
        make_backend(config(backend="replay", replay_dir=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="writer.replay_dir=.*holds no"):
        make_backend(config(backend="replay", replay_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="writer.replay_dir must be set"):
        make_backend(config(backend="replay"))


# --- cache -----------------------------------------------------------------------------------------------------------


class CountingBackend:
    """Completes each request with a text naming its seed; records every batch it is sent."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.batches: list[list[Request]] = []

    def complete(self, requests: list[Request]) -> list[str]:
        self.batches.append(requests)
        return [f"{self.name} {r.seed}" for r in requests]


def test_cache_serves_repeats_from_disk(tmp_path):
    inner = CountingBackend()
    cached = CachedBackend(inner, tmp_path)
    assert cached.complete([request(seed=1), request(seed=2)]) == ["fake 1", "fake 2"]
    assert CachedBackend(inner, tmp_path).complete([request(seed=2), request(seed=1)]) == ["fake 2", "fake 1"]
    assert cached.complete([request(seed=3), request(seed=1), request(seed=4)]) == ["fake 3", "fake 1", "fake 4"]
    assert [[r.seed for r in batch] for batch in inner.batches] == [[1, 2], [3, 4]]  # misses only, one batch a call
    assert (cached.hits, cached.misses) == (1, 4)
    record = json.loads((tmp_path / f"{cached.key(request(seed=1))}.json").read_text())
    assert record == {"backend": "fake", "request": request(seed=1).to_json(), "completion": "fake 1"}


def test_cache_key_changes_with_every_field_and_the_backend_name(tmp_path):
    cached = CachedBackend(CountingBackend(), tmp_path)
    base = request()
    variants = [
        replace(base, messages=base.messages[:1]),
        replace(base, temperature=0.8),
        replace(base, top_p=0.9),
        replace(base, max_tokens=65),
        replace(base, seed=1),
    ]
    keys = {cached.key(r) for r in [base, *variants]} | {CachedBackend(CountingBackend("other"), tmp_path).key(base)}
    assert len(keys) == 7
    assert cached.key(replace(base, temperature=1)) == cached.key(replace(base, temperature=1.0))


def test_cache_treats_a_corrupt_file_as_a_miss_and_rewrites_it(tmp_path):
    inner = CountingBackend()
    cached = CachedBackend(inner, tmp_path)
    path = tmp_path / f"{cached.key(request())}.json"
    path.write_text('{"completion": ')
    with pytest.warns(UserWarning, match=f"corrupt completion cache file {path}"):
        assert cached.complete([request()]) == ["fake 0"]
    assert json.loads(path.read_text())["completion"] == "fake 0"
    assert cached.complete([request()]) == ["fake 0"] and len(inner.batches) == 1


def test_make_backend_caches_when_cache_dir_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with OpenAIServer(["once"]) as server:
        backend = make_backend(config(base_url=server.base_url, cache_dir="~/completions"))
        assert isinstance(backend, CachedBackend) and backend.name.startswith("openai:")
        assert backend.complete([request()]) == backend.complete([request()]) == ["once"]
    assert len(server.requests) == 1 and len(list((tmp_path / "completions").glob("*.json"))) == 1


# --- make_backend ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backend": "vllm"}, r"writer.backend='vllm' is not one of \['openai', 'replay', 'transformers'\]"),
        ({"model": None}, "writer.model must be set"),
        ({"timeout_s": 0}, "writer.timeout_s"),
        ({"max_retries": -1}, "writer.max_retries"),
        ({"concurrency": 0}, "writer.concurrency"),
    ],
)
def test_make_backend_names_the_bad_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_backend(config(**overrides))


def test_config_names_unknown_keys():
    with pytest.raises(ValueError, match="writer.temperature"):
        build(BackendConfig, {**SETTINGS, "temperature": 0.7}, "writer")
