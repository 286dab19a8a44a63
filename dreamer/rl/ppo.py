"""PPO (clipped surrogate, GAE) on a vector env whose observations, rewards and flags are torch tensors.

Reads top to bottom like CleanRL's ppo.py. Shapes: T = num_steps, N = num_envs, O = obs dim.
The policy is any module with the protocol of `MLPPolicy` (`policy(obs) -> (distribution, values)`,
`value`, `log_prob`, `entropy`, `env_action`); an `AuxiliaryLoss` (OPSD) adds a second objective on
the same minibatches, mixed as `w_ppo * policy loss + w_aux * auxiliary loss`.
The vector env must autoreset in SAME_STEP mode (`SimVectorEnv` does; wrap Gymnasium vector envs
with `dreamer.rl.ppo.TorchVectorEnv`): truncated episodes are bootstrapped with the value of
`info["final_obs"]`, terminated ones are not.

Bad numbers stop training with a `NonFiniteError` naming where they arose: a non-finite observation or
reward from the env (checked once per rollout; the offending transition is in the error), or a
non-finite loss or gradient (checked before each optimizer step, so the weights never take them).
`checkpoint` receives a `PPOCheckpoint` every `checkpoint_every` updates; `resume` goes on from one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from dataclasses import dataclass, field
from typing import Protocol

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorWrapper
from torch import Tensor, nn
from torch.distributions import Distribution

from dreamer.progress import progress as progress_line
from dreamer.rl.moments import merge_moments


@dataclass(frozen=True)
class PPOConfig:
    total_steps: int          # env steps (summed over envs) per call of `train_ppo`
    num_envs: int
    num_steps: int            # rollout length per env per update
    learning_rate: float
    anneal_lr: bool
    gamma: float
    gae_lambda: float
    num_minibatches: int
    update_epochs: int
    clip_coef: float
    clip_vloss: bool
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    target_kl: float | None   # stop an update's epochs early past this approx KL (None: never)
    norm_adv: bool
    normalize_reward: bool    # learn from rewards divided by the running std of the discounted return (`ReturnScale`)
    update_obs_stats: bool    # after each update, merge the rollout's obs into the policy's obs statistics
    checkpoint_every: int     # updates between the checkpoints a run resumes from

    def __post_init__(self):
        for key in ("total_steps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "checkpoint_every"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)!r}")
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(f"num_envs * num_steps = {self.num_envs * self.num_steps} must be divisible by "
                             f"num_minibatches = {self.num_minibatches}")


class ReturnScale:
    """Rewards divided by the running std of the discounted return (Engstrom et al. 2020, "Implementation Matters";
    Gymnasium's `NormalizeReward`, SB3's `VecNormalize`), for learning only: the critic's targets are then of order
    1 whatever the env's reward units. With CartPole's raw +1 per step (targets near 100), PPO that had reached 500
    in a faithful dream fell back to 100-170 on 6 of 16 training seeds, with the scale on none of 18 (2026-12-02's
    round-2 sims trained again; `benchmarks/dream_diagnosis.py`'s "fresh, raw rewards" variant measures it on any run).

    The return is each env's discounted sum of rewards so far, reset where an episode ends; its moments cover every
    step seen (float64), and are saved with a PPO checkpoint (`state_dict`). A rollout's rewards are all divided
    by the std after its own steps: one scale per update, and none from a single step's returns."""

    def __init__(self, num_envs: int, gamma: float, device: torch.device):
        self.gamma = gamma
        self.discounted = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.count, self.mean, self.var = (torch.zeros((), dtype=torch.float64, device=device) for _ in range(3))

    def observe(self, reward: Tensor, done: Tensor) -> None:
        """(N,) rewards of one step, and whether each env's episode ended there."""
        self.discounted = self.discounted * self.gamma + reward
        self.count, self.mean, self.var = merge_moments(self.count, self.mean, self.var, self.discounted)
        self.discounted = self.discounted * ~done

    def std(self) -> Tensor:
        """The scale rewards are divided by (a float32 scalar)."""
        return (self.var + 1e-8).sqrt().float()

    def state_dict(self) -> dict[str, Tensor]:
        return {"count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.count, self.mean, self.var = (state[key].to(self.mean) for key in ("count", "mean", "var"))


class AuxiliaryLoss(Protocol):
    """A second objective on PPO's own on-policy minibatches (the OPSD term)."""

    def weights(self, update: int, num_updates: int) -> tuple[float, float]:
        """(weight of the PPO policy loss, weight of this loss) in update `update` of `num_updates`."""

    def loss(self, obs: Tensor, action: Tensor, episode_step: Tensor, dist: Distribution) -> tuple[Tensor, dict[str, Tensor]]:
        """Minibatch (B, O) obs, (B, ...) actions, (B,) steps since the episode began, and the policy's action
        distribution there (differentiable, from PPO's own forward) -> (scalar loss, figures)."""

    def after_step(self) -> None:
        """Called after every optimizer step (e.g. an EMA teacher follows the student)."""

    def state_dict(self) -> dict:
        """What it needs to go on after a resume (tensors and containers; e.g. an EMA teacher's weights)."""

    def load_state_dict(self, state: dict) -> None: ...


class NonFiniteError(FloatingPointError):
    """NaN or inf in training: `where` ("env" or "loss"), a message saying at which step and in what, and
    `details` (JSON-able numbers: the offending transition, or the loss terms)."""

    def __init__(self, where: str, message: str, details: dict):
        super().__init__(message)
        self.where, self.details = where, details


@dataclass
class PPOCheckpoint:
    """Everything `train_ppo` needs to go on after `updates` updates."""

    updates: int
    env_steps: int
    episodes: int
    episode_return_mean: float | None
    policy: dict  # state_dict
    optimizer: dict  # state_dict
    torch_rng: Tensor  # torch's CPU generator state
    history: list[dict]
    auxiliary: dict | None = None  # the auxiliary loss's state_dict
    return_scale: dict | None = None  # `ReturnScale.state_dict()` (algo.normalize_reward)


@dataclass
class PPOResult:
    env_steps: int
    updates: int
    episodes: int
    episode_return_mean: float | None   # mean return of the episodes finished in the last update
    steps_per_second: float
    history: list[dict] = field(default_factory=list)   # one row of figures per update


class TorchVectorEnv(VectorWrapper):
    """Gymnasium envs in a SyncVectorEnv (SAME_STEP autoreset) speaking torch, for PPO on real envs.

    `info["final_obs"]` becomes a dense (N, O) tensor (rows of unfinished envs hold their obs).
    """

    def __init__(self, env_fns: list[Callable[[], gymnasium.Env]], device: str | torch.device):
        super().__init__(gymnasium.vector.SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP))
        self.device = torch.device(device)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device), info

    def step(self, actions: torch.Tensor):
        obs, reward, terminated, truncated, info = self.env.step(actions.cpu().numpy())
        final_obs = obs.copy()
        for i in np.flatnonzero(info.get("_final_obs", [])):
            final_obs[i] = info["final_obs"][i]
        tensor = partial(torch.as_tensor, device=self.device)
        return (
            tensor(obs, dtype=torch.float32),
            tensor(reward, dtype=torch.float32),
            tensor(terminated, dtype=torch.bool),
            tensor(truncated, dtype=torch.bool),
            {"final_obs": tensor(final_obs, dtype=torch.float32)},
        )


def train_ppo(
    policy: nn.Module,
    envs: gymnasium.vector.VectorEnv,
    config: PPOConfig,
    seed: int,
    log: Callable[[dict, int], None] | None = None,
    progress: bool = True,
    auxiliary: AuxiliaryLoss | None = None,
    checkpoint: Callable[[PPOCheckpoint], None] | None = None,
    resume: PPOCheckpoint | None = None,
) -> PPOResult:
    """Train `policy` in place on `envs` for `config.total_steps` env steps (plus `auxiliary`'s loss).

    From `resume`, the weights, optimizer, RNG and counters are restored and the envs start fresh
    episodes (reset with `seed + updates`)."""
    device = next(policy.parameters()).device
    num_envs, T = envs.num_envs, config.num_steps
    if num_envs != config.num_envs:
        raise ValueError(f"algo.num_envs={config.num_envs} but the vector env has {num_envs} envs")
    batch_size = num_envs * T
    minibatch_size = batch_size // config.num_minibatches
    num_updates = max(1, config.total_steps // batch_size)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=1e-5)
    if config.update_obs_stats and not hasattr(policy, "update_obs_stats"):
        raise ValueError(f"algo.update_obs_stats=true needs a policy with running obs statistics; "
                         f"{type(policy).__name__} has none (set algo.update_obs_stats=false)")

    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_shape = envs.single_action_space.shape
    obs_buf = torch.zeros((T, num_envs, obs_dim), device=device)
    final_obs_buf = torch.zeros((T, num_envs, obs_dim), device=device)
    actions_buf = torch.zeros((T, num_envs, *act_shape), device=device, dtype=torch.long if policy.discrete else torch.float32)
    logprobs_buf = torch.zeros((T, num_envs), device=device)
    rewards_buf = torch.zeros((T, num_envs), device=device)
    terminated_buf = torch.zeros((T, num_envs), device=device)
    truncated_buf = torch.zeros((T, num_envs), device=device)
    values_buf = torch.zeros((T, num_envs), device=device)
    episode_step_buf = torch.zeros((T, num_envs), device=device, dtype=torch.long)
    finite_buf = torch.ones((T, num_envs), device=device, dtype=torch.bool)  # the env's outputs at step t were finite

    result = PPOResult(env_steps=0, updates=0, episodes=0, episode_return_mean=None, steps_per_second=0.0)
    scale = ReturnScale(num_envs, config.gamma, device) if config.normalize_reward else None
    if resume is not None:
        policy.load_state_dict(resume.policy)
        optimizer.load_state_dict(resume.optimizer)
        torch.set_rng_state(resume.torch_rng)
        if auxiliary is not None:
            auxiliary.load_state_dict(resume.auxiliary)
        if scale is not None and resume.return_scale is not None:
            scale.load_state_dict(resume.return_scale)
        result = PPOResult(resume.env_steps, resume.updates, resume.episodes, resume.episode_return_mean, 0.0,
                           list(resume.history))
    obs, _ = envs.reset(seed=seed + result.updates)
    episode_return = torch.zeros(num_envs, device=device)
    episode_step = torch.zeros(num_envs, device=device, dtype=torch.long)
    start, steps_at_start = time.perf_counter(), result.env_steps
    total = num_updates * batch_size
    line = progress_line(f"PPO, {total:,} env steps", total) if progress else nullcontext(lambda done, status: None)
    with line as advance:
        for update in range(result.updates, num_updates):
            if config.anneal_lr:
                optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - update / num_updates)
            finished_returns = torch.zeros((), device=device)
            finished_count = torch.zeros((), device=device)

            # Rollout: T steps in each of the N envs.
            for t in range(T):
                with torch.no_grad():
                    dist, values_buf[t] = policy(obs)
                    action = dist.sample()
                    logprobs_buf[t] = policy.log_prob(dist, action)
                obs_buf[t], actions_buf[t], episode_step_buf[t] = obs, action, episode_step
                next_obs, reward, terminated, truncated, info = envs.step(policy.env_action(action))
                done = terminated | truncated
                rewards_buf[t] = reward
                if scale is not None:
                    scale.observe(reward, done)
                terminated_buf[t], truncated_buf[t] = terminated.float(), truncated.float()
                final_obs_buf[t] = info["final_obs"]
                episode_return += reward
                finished_returns += (episode_return * done).sum()
                finished_count += done.sum()
                episode_return *= ~done
                episode_step = (episode_step + 1) * ~done
                finite_buf[t] = torch.isfinite(next_obs).all(-1) & torch.isfinite(final_obs_buf[t]).all(-1) & torch.isfinite(reward)
                obs = torch.nan_to_num(next_obs)  # kept out of the policy until the rollout is checked
            check_rollout(finite_buf, obs_buf, actions_buf, rewards_buf, final_obs_buf, result.env_steps)

            # Truncated episodes continue beyond the horizon: bootstrap them with V(final obs).
            with torch.no_grad():
                rewards = rewards_buf.clone() if scale is None else rewards_buf / scale.std()
                truncated = truncated_buf.bool()
                if truncated.any():  # (a model may not take an empty batch)
                    rewards[truncated] += config.gamma * policy.value(final_obs_buf[truncated])
                next_value = policy.value(obs)
                advantages = torch.zeros_like(rewards)
                last_gae = torch.zeros(num_envs, device=device)
                for t in reversed(range(T)):
                    following = next_value if t == T - 1 else values_buf[t + 1]
                    not_done = 1.0 - torch.maximum(terminated_buf[t], truncated_buf[t])
                    delta = rewards[t] + config.gamma * following * not_done - values_buf[t]
                    last_gae = delta + config.gamma * config.gae_lambda * not_done * last_gae
                    advantages[t] = last_gae
                returns = advantages + values_buf

            # Update: clipped surrogate on shuffled minibatches.
            b_obs, b_actions = obs_buf.reshape(batch_size, obs_dim), actions_buf.reshape(batch_size, *act_shape)
            b_logprobs, b_advantages = logprobs_buf.reshape(-1), advantages.reshape(-1)
            b_returns, b_values = returns.reshape(-1), values_buf.reshape(-1)
            b_episode_step = episode_step_buf.reshape(-1)
            ppo_weight, aux_weight = (1.0, 0.0) if auxiliary is None else auxiliary.weights(update, num_updates)
            clip_fractions, aux_figures, approx_kl = [], [], torch.zeros(())
            for _ in range(config.update_epochs):
                order = torch.randperm(batch_size, device=device)
                for lo in range(0, batch_size, minibatch_size):
                    mb = order[lo : lo + minibatch_size]
                    dist, new_value = policy(b_obs[mb])
                    new_logprob = policy.log_prob(dist, b_actions[mb])
                    log_ratio = new_logprob - b_logprobs[mb]
                    ratio = log_ratio.exp()
                    with torch.no_grad():
                        approx_kl = ((ratio - 1) - log_ratio).mean()
                        clip_fractions.append(((ratio - 1.0).abs() > config.clip_coef).float().mean())
                    mb_adv = b_advantages[mb]
                    if config.norm_adv:
                        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)).mean()
                    if config.clip_vloss:
                        clipped = b_values[mb] + (new_value - b_values[mb]).clamp(-config.clip_coef, config.clip_coef)
                        v_loss = 0.5 * torch.max((new_value - b_returns[mb]) ** 2, (clipped - b_returns[mb]) ** 2).mean()
                    else:
                        v_loss = 0.5 * ((new_value - b_returns[mb]) ** 2).mean()
                    entropy = policy.entropy(dist).mean()
                    loss = ppo_weight * (pg_loss - config.ent_coef * entropy) + config.vf_coef * v_loss
                    if aux_weight:
                        aux_loss, figures = auxiliary.loss(b_obs[mb], b_actions[mb], b_episode_step[mb], dist)
                        loss = loss + aux_weight * aux_loss
                        aux_figures.append(figures)
                    optimizer.zero_grad()
                    loss.backward()
                    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                    if not torch.isfinite(loss + grad_norm):
                        terms = {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, "grad_norm": grad_norm}
                        if aux_weight:
                            terms["auxiliary_loss"] = aux_loss
                        terms = {key: float(value.detach()) for key, value in terms.items()}
                        raise NonFiniteError("loss", f"non-finite loss or gradient in PPO update {update + 1} (after "
                                             f"{result.env_steps:,} env steps): {terms}; the update was not applied", terms)
                    optimizer.step()
                    if auxiliary is not None:
                        auxiliary.after_step()
                if config.target_kl is not None and approx_kl > config.target_kl:
                    break
            if config.update_obs_stats:  # after the epochs, so that every forward pass of this update saw the rollout's statistics
                policy.update_obs_stats(b_obs)

            # Bookkeeping: one host sync per update.
            count = int(finished_count.item())
            result.env_steps += batch_size
            result.updates += 1
            result.episodes += count
            if count:
                result.episode_return_mean = float(finished_returns.item()) / count
            result.steps_per_second = (result.env_steps - steps_at_start) / (time.perf_counter() - start)
            row = {
                "env_steps": result.env_steps,
                "episode_return_mean": result.episode_return_mean,
                "episodes": count,
                "policy_loss": float(pg_loss.item()),
                "value_loss": float(v_loss.item()),
                "entropy": float(entropy.item()),
                "approx_kl": float(approx_kl.item()),
                "clip_fraction": float(torch.stack(clip_fractions).mean().item()),
                "steps_per_second": result.steps_per_second,
            }
            if auxiliary is not None:
                row.update(ppo_weight=ppo_weight, aux_weight=aux_weight)
                row.update({key: float(torch.stack([f[key] for f in aux_figures]).mean()) for key in (aux_figures or [{}])[0]})
            result.history.append(row)
            if log is not None:
                log(row, result.env_steps)
            shown = "-" if result.episode_return_mean is None else f"{result.episode_return_mean:.1f}"
            advance(result.env_steps, f"return {shown}, {result.steps_per_second:,.0f} steps/s")
            if checkpoint is not None and (result.updates % config.checkpoint_every == 0 or result.updates == num_updates):
                checkpoint(PPOCheckpoint(result.updates, result.env_steps, result.episodes, result.episode_return_mean,
                                         policy.state_dict(), optimizer.state_dict(), torch.get_rng_state(),
                                         list(result.history), None if auxiliary is None else auxiliary.state_dict(),
                                         None if scale is None else scale.state_dict()))
    return result


def check_rollout(finite: Tensor, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, env_steps: int) -> None:
    """Raise NonFiniteError at the first (step, env) of a (T, N) rollout where the env returned a non-finite
    observation (the next one, or the first of the next episode) or reward (one host sync)."""
    if bool(finite.all()):
        return
    t, env = (int(i) for i in torch.nonzero(~finite)[0])
    details = {"obs": obs[t, env].tolist(), "action": action[t, env].tolist(), "next_obs": next_obs[t, env].tolist(),
               "reward": float(reward[t, env]), "env": env, "step_in_rollout": t}
    what = "reward" if not torch.isfinite(reward[t, env]) else "observation"
    raise NonFiniteError("env", f"the env returned a non-finite {what} at env step "
                         f"{env_steps + (t + 1) * obs.shape[1]:,} (env {env}), stepping from {details}", details)
