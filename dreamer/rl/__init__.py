"""Policies, PPO, evaluation in the real env, and policy save/load."""

from dreamer.rl.evaluate import evaluate_in_sim, evaluate_policy
from dreamer.rl.policy import MLPPolicy, MLPPolicyConfig, load_policy
from dreamer.rl.ppo import AuxiliaryLoss, PPOConfig, PPOResult, TorchVectorEnv, train_ppo

__all__ = ["AuxiliaryLoss", "MLPPolicy", "MLPPolicyConfig", "PPOConfig", "PPOResult", "TorchVectorEnv", "evaluate_in_sim", "evaluate_policy", "load_policy", "train_ppo"]
