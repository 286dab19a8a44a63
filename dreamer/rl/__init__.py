"""Policies, PPO, evaluation in the real env, and policy save/load."""

from dreamer.rl.evaluate import evaluate_in_sim, evaluate_policy, rollout_in_sim
from dreamer.rl.explore import NoveltyConfig, novelty_sim
from dreamer.rl.policy import MLPPolicy, MLPPolicyConfig, load_policy
from dreamer.rl.ppo import AuxiliaryLoss, NonFiniteError, PPOCheckpoint, PPOConfig, PPOResult, TorchVectorEnv, train_ppo

__all__ = ["AuxiliaryLoss", "MLPPolicy", "NonFiniteError", "PPOCheckpoint", "MLPPolicyConfig", "NoveltyConfig", "PPOConfig", "PPOResult", "TorchVectorEnv", "evaluate_in_sim", "evaluate_policy", "load_policy", "novelty_sim", "rollout_in_sim", "train_ppo"]
