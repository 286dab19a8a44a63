"""The language-model writer: a search over sims written by a model and judged by the sandbox.

Each iteration asks the model for `candidates` sims at once and validates them in parallel. The
first iteration sees the session; every later request shows the session, one of the best
candidates so far (a beam of width `candidates`) as the model's answer, and that candidate's
sandbox report (only the last exchange, so the context stays bounded): the
failing checks with their tracebacks, the held-out fidelity figures, and counterexamples (the
held-out transitions it predicts worst). The search stops at the first iteration that yields an
accepted sim, or after `iterations`; it returns the best candidate (accepted first, then by
held-out accuracy and NRMSE).

The audit trail, under the task's `audit_dir`:

    previous/{sim.py, report.json}                 the previous round's sim, re-judged on new data
    iter_<i>/candidate_<k>/request.json            messages and sampling parameters sent
    iter_<i>/candidate_<k>/prompt.md               the same conversation, readable
    iter_<i>/candidate_<k>/completion.md           the model's answer, verbatim
    iter_<i>/candidate_<k>/sim.py                  the code taken from it
    iter_<i>/candidate_<k>/report.json             its sandbox report
    selection.json                                 every candidate's scores, parents and the pick
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from dreamer.artifacts import write_json, write_text
from dreamer.progress import progress
from dreamer.sandbox import SandboxReport
from dreamer.writers.backends import Backend, Request
from dreamer.writers.prompting import Templates, extract_code, feedback_prompt, session_prompt
from dreamer.writers.protocol import Written, WriteTask, candidate_summary, save_candidate, verdict_line
from dreamer.writers.symbolic import SymbolicWriter, SymbolicWriterConfig

console = Console(stderr=True)


@dataclass(frozen=True)
class LLMWriterConfig:
    """The search (the backend's own keys are in `dreamer.writers.backends.BackendConfig`)."""

    candidates: int  # completions asked for per iteration (K), judged in parallel
    iterations: int  # rounds of feedback (R)
    temperature: float
    top_p: float
    max_tokens: int  # per completion
    seed: int  # request seeds are seed + 1000 * iteration + candidate
    prompt_transitions: int  # sampled transitions shown in the session prompt
    reuse_previous: bool  # re-judge the previous round's sim first; keep it if still accepted
    prompts_dir: str | None  # templates directory; None: dreamer/writers/templates
    draft: SymbolicWriterConfig | None  # show the offline writer's draft in the prompt; None: no draft

    def __post_init__(self):
        for key in ("candidates", "iterations", "max_tokens", "prompt_transitions"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not 0 <= self.temperature or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass
class Candidate:
    label: str  # "previous" or "iter_<i>/candidate_<k>"
    parent: str | None  # the candidate whose report this one answered
    completion: str
    source: str
    report: SandboxReport

    def rank(self) -> tuple:
        """Higher is better: accepted, then checks passed, held-out accuracy, lower NRMSE."""
        f = self.report.fidelity
        nrmse = None if f is None else f.obs_nrmse_mean
        return (self.report.accepted, sum(check["passed"] for check in self.report.checks.values()),
                0.0 if f is None else f.accuracy, -nrmse if nrmse is not None and math.isfinite(nrmse) else -math.inf)



class LLMWriter:
    """Sims written by a language model, refined with the sandbox's reports (module docstring)."""

    name = "llm"

    def __init__(self, config: LLMWriterConfig, backend: Backend):
        self.config = config
        self.backend = backend
        self.templates = Templates.load(config.prompts_dir)

    def write(self, task: WriteTask) -> Written:
        cfg, audit = self.config, task.audit_dir
        draft = None if cfg.draft is None else SymbolicWriter(cfg.draft).draft(task.train)
        opening = ({"role": "system", "content": self.templates.system},
                   {"role": "user", "content": session_prompt(self.templates, task.train, cfg.prompt_transitions,
                                                              cfg.seed, draft)})
        pool: list[Candidate] = []
        if task.previous is not None and cfg.reuse_previous:
            [report] = task.judge([task.previous])
            answer = f"```python\n{task.previous.strip()}\n```\n"
            pool.append(Candidate("previous", None, answer, task.previous, report))
            save_candidate(audit, Written(task.previous, report, "previous"))
            console.print(f"  previous round's sim on the new data: {verdict_line(report)}")
        iterations_run = 0
        for iteration in range(1, cfg.iterations + 1):
            if any(candidate.report.accepted for candidate in pool):
                break
            iterations_run = iteration
            ranked = sorted(pool, key=Candidate.rank, reverse=True)[:cfg.candidates]
            parents = [ranked[k % len(ranked)] if ranked else None for k in range(cfg.candidates)]
            requests = [Request(opening if parent is None else opening + (
                                    {"role": "assistant", "content": parent.completion},
                                    {"role": "user", "content": feedback_prompt(self.templates, parent.report)}),
                                cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed + 1000 * iteration + k)
                        for k, parent in enumerate(parents)]
            with progress(f"iteration {iteration}/{cfg.iterations}: {len(requests)} completion"
                          f"{'s' * (len(requests) != 1)} from {self.backend.name}"):
                completions = self.backend.complete(requests)
            sources = [extract_code(completion) for completion in completions]
            reports = task.judge(sources)
            for k, (parent, request, completion, source, report) in enumerate(
                    zip(parents, requests, completions, sources, reports)):
                candidate = Candidate(f"iter_{iteration}/candidate_{k + 1}", parent and parent.label, completion,
                                      source, report)
                self.save(candidate, request, audit)
                pool.append(candidate)
            console.print(f"  iteration {iteration}/{cfg.iterations}: "
                          + ", ".join(verdict_line(report) for report in reports))
        best = max(pool, key=Candidate.rank)
        write_json(audit / "selection.json", {
            "backend": self.backend.name, "config": asdict(cfg), "iterations_run": iterations_run,
            "chosen": best.label, "accepted": best.report.accepted,
            "candidates": [candidate_summary(c.label, c.parent, c.report) for c in pool]})
        return Written(best.source, best.report, best.label)

    @staticmethod
    def save(candidate: Candidate, request: Request, audit: Path) -> None:
        folder = save_candidate(audit, Written(candidate.source, candidate.report, candidate.label))
        write_json(folder / "request.json", asdict(request))
        write_text(folder / "prompt.md", "\n\n".join(f"## {message['role']}\n\n{message['content']}"
                                                     for message in request.messages) + "\n")
        write_text(folder / "completion.md", candidate.completion)
