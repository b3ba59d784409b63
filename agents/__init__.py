"""What acts: planners, the MPC agent and stable-baselines3 agents trained in the dream."""
