"""The language-model writer: prompts, the refinement loop over a loopback server, a tiny local model, replay."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import gymnasium
import pytest
from omegaconf import OmegaConf
from openai_server import OpenAIServer
from tiny_lm import build_tiny_causal_lm

from dreamer.sandbox import SandboxConfig
from dreamer.traces import collect_trace
from dreamer.writers import LLMWriter, LLMWriterConfig, WriteTask, make_writer
from dreamer.writers.backends import BackendConfig, make_backend
from dreamer.writers.prompting import Templates, extract_code, session_prompt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "completions" / "cartpole"
COMPLETIONS = [path.read_text() for path in sorted(EXAMPLES.glob("*.md"))]
GOOD = (ROOT / "tests" / "fixtures" / "cartpole_sim.py").read_text()


@pytest.fixture(scope="module")
def session():
    trace = collect_trace(gymnasium.make("CartPole-v1"), 1000, seed=0)
    trace.notes = "a pole balanced on a cart"
    trace.feedback = {3: "the pole is falling left"}
    return trace.split(0.2, seed=0)


@pytest.fixture(scope="module")
def sandbox() -> SandboxConfig:
    return SandboxConfig.from_dict(OmegaConf.load(ROOT / "conf" / "sandbox" / "default.yaml"))


def search_config(**changes) -> LLMWriterConfig:
    values = dict(candidates=4, iterations=3, temperature=0.8, top_p=0.95, max_tokens=256, seed=0,
                  prompt_transitions=40, reuse_previous=True, prompts_dir=None, draft=None)
    return LLMWriterConfig(**{**values, **changes})


def backend_config(**changes) -> BackendConfig:
    values = dict(backend="openai", model="coder", base_url=None, api_key_env=None, timeout_s=10, max_retries=0,
                  concurrency=4, replay_dir=None, device="cpu", cache_dir=None)
    return BackendConfig(**{**values, **changes})


def task(session, sandbox, audit: Path, previous: str | None = None) -> WriteTask:
    train, held_out = session
    return WriteTask(train, held_out, sandbox, "dream", audit, previous)


def user_messages(body: dict) -> list[str]:
    return [message["content"] for message in body["messages"] if message["role"] == "user"]


# --- prompts -------------------------------------------------------------------------------------

def test_session_prompt_shows_what_the_session_taught(session):
    train, _ = session
    draft = "def transition(state, action, rng):\n    return state\n"
    prompt = session_prompt(Templates.load(None), train, transitions=40, seed=0, draft=draft)
    assert "Discrete(2)" in prompt and "a pole balanced on a cart" in prompt
    assert "row 3 (episode 0): the pole is falling left" in prompt
    assert "| 3 |" in prompt  # the per-dimension statistics table has a row per obs dim
    assert "the values taken: 1 (" in prompt  # CartPole's reward is constant
    assert draft.strip() in prompt
    lines = [line for line in prompt.splitlines() if line[:1].isdigit() and line.count(" | ") == 7]
    assert len(lines) == 40
    shown_terminal = [line for line in lines if line.split(" | ")[6] == "True"]
    assert shown_terminal, "terminal transitions are always among the samples"
    starts = set(train.episode_starts().tolist())
    assert any(int(line.split(" | ")[0]) in starts for line in lines)


def test_a_bad_template_is_named_with_its_placeholders(tmp_path):
    for name in ("system", "session", "feedback"):
        (tmp_path / f"{name}.md").write_text("$verdict $nonsense")
    with pytest.raises(ValueError, match=r"feedback.md: bad placeholder 'nonsense'.*\$verdict"):
        Templates.load(tmp_path).render("feedback", {"verdict": "rejected"})
    (tmp_path / "session.md").unlink()
    with pytest.raises(FileNotFoundError, match="session.md not found"):
        Templates.load(tmp_path)


@pytest.mark.parametrize(("completion", "code"), [
    ("Reasoning.\n```python\nA = 1\n```\nand then\n```python\nB = 2\n```\n", "B = 2\n"),
    ("```\nC = 3\n```", "C = 3\n"),
    ("Cut off by max_tokens:\n```python\nD = 4\ndef f(", "D = 4\ndef f(\n"),
    ("E = 5", "E = 5\n"),
])
def test_code_is_taken_from_the_last_python_block(completion, code):
    assert extract_code(completion) == code


# --- the refinement loop over a loopback OpenAI-compatible server ---------------------------------

def test_the_loop_rejects_feeds_back_and_accepts_the_good_one(session, sandbox, tmp_path):
    """Recorded completions: iteration 1 has a syntax error, wrong gravity, a wrong termination
    rule and an `import os`; iteration 2's first answer is right."""
    cache = tmp_path / "cache"

    def answer(body: dict) -> str:  # requests arrive in any order; seed = 1000 * iteration + candidate
        return COMPLETIONS[4 * (body["seed"] // 1000 - 1) + body["seed"] % 1000]

    with OpenAIServer(answer) as server:
        backend = make_backend(backend_config(base_url=server.base_url, cache_dir=str(cache)))
        writer = LLMWriter(search_config(), backend)
        written = writer.write(task(session, sandbox, tmp_path / "audit"))
    assert written.report.accepted and written.label == "iter_2/candidate_1"
    assert len(server.requests) == 8, "the search stops at the iteration that yields an accepted sim"
    requests = sorted(server.requests, key=lambda body: body["seed"])

    audit = tmp_path / "audit"
    first = [json.loads((audit / f"iter_1/candidate_{k}/report.json").read_text()) for k in (1, 2, 3, 4)]
    assert not any(report["accepted"] for report in first)
    assert "syntax error" in first[0]["reasons"][0]
    assert any("kstep_nrmse" in reason for reason in first[1]["reasons"])
    assert any("termination_accuracy" in reason for reason in first[2]["reasons"])
    assert "import of `os`" in first[3]["reasons"][0]

    # Iteration 1's prompts are the session only; iteration 2's answer a candidate with its report.
    assert all(len(body["messages"]) == 2 for body in requests[:4])
    feedback = user_messages(requests[4])[-1]
    assert "## Counterexamples" in feedback and "wrong in termination" in feedback
    assert "termination_accuracy = 0.9" in feedback  # the failing check, quoted
    best_parent = requests[4]["messages"][-2]["content"]
    assert "return state[:, 2].abs() > 0.5" in best_parent, "the best rejected candidate is answered first"
    assert any("syntax error" in user_messages(body)[-1] for body in requests[4:8])
    saved = (audit / "iter_2" / "candidate_1" / "prompt.md").read_text()
    assert "## Counterexamples" in saved and "- row " in saved
    assert (audit / "iter_2" / "candidate_1" / "completion.md").read_text() == COMPLETIONS[4]
    selection = json.loads((audit / "selection.json").read_text())
    assert selection["chosen"] == "iter_2/candidate_1" and selection["accepted"] and selection["iterations_run"] == 2
    assert [c["parent"] for c in selection["candidates"]][4] == "iter_1/candidate_3"

    # The cache makes the rerun reproducible with no server at all.
    offline = make_backend(backend_config(base_url=server.base_url, cache_dir=str(cache)))
    again = LLMWriter(search_config(), offline).write(task(session, sandbox, tmp_path / "again"))
    assert again.source == written.source and again.label == written.label


def test_the_previous_sim_is_kept_without_asking_the_model(session, sandbox, tmp_path):
    class Unreachable:
        name = "unreachable"

        def complete(self, requests):
            raise AssertionError("the model was asked although the previous sim is still accepted")

    written = LLMWriter(search_config(), Unreachable()).write(task(session, sandbox, tmp_path, previous=GOOD))
    assert written.report.accepted and written.label == "previous"
    assert (tmp_path / "previous" / "report.json").is_file()


def test_a_tiny_random_transformers_model_is_rejected_with_a_clear_report(session, sandbox, tmp_path):
    model = build_tiny_causal_lm(tmp_path / "lm")
    backend = make_backend(backend_config(backend="transformers", model=str(model)))
    writer = LLMWriter(search_config(candidates=2, iterations=2, max_tokens=32), backend)
    written = writer.write(task(session, sandbox, tmp_path / "audit"))
    assert not written.report.accepted
    assert written.report.reasons and all(reason.startswith(("unsafe source", "loads failed"))
                                          for reason in written.report.reasons)
    for k in (1, 2):
        assert (tmp_path / "audit" / f"iter_2/candidate_{k}/completion.md").is_file()
    assert "Verdict: rejected" in (tmp_path / "audit" / "iter_2/candidate_1/prompt.md").read_text()


# --- config ---------------------------------------------------------------------------------------

def test_make_writer_names_bad_keys():
    section = OmegaConf.load(ROOT / "conf" / "writer" / "llm.yaml")
    values = {key: value for key, value in OmegaConf.to_container(section).items() if key != "defaults"}
    values.update(device="cpu", seed=0, backend="replay", replay_dir=str(EXAMPLES), draft=None)
    assert isinstance(make_writer(values), LLMWriter)
    with pytest.raises(ValueError, match=r"writer\.candidate"):
        make_writer({**values, "candidate": 3})
    with pytest.raises(ValueError, match="candidates must be a positive int"):
        make_writer({**values, "candidates": 0})
    with pytest.raises(ValueError, match=r"writer.kind='gpt' is not one of \['auto', 'hybrid', 'llm', 'neural', 'symbolic'\]"):
        make_writer({**values, "kind": "gpt"})


def test_search_config_checks_its_values():
    with pytest.raises(ValueError, match="top_p"):
        dataclasses.replace(search_config(), top_p=0.0)
