"""The reward-KL frontier (DPO paper Fig. 2 left): the task's stages, the methods, the sweep and its results."""
