"""Policies, PPO, evaluation in the real env, and policy save/load."""

from dreamer.rl.evaluate import evaluate_policy
from dreamer.rl.policy import MLPPolicy, MLPPolicyConfig, load_policy
from dreamer.rl.ppo import PPOConfig, PPOResult, TorchVectorEnv, train_ppo

__all__ = ["MLPPolicy", "MLPPolicyConfig", "PPOConfig", "PPOResult", "TorchVectorEnv", "evaluate_policy", "load_policy", "train_ppo"]
