"""The GPT-2 controlled-sentiment task (DPO paper Sec. 6.1): corpus, rewards, prompts, pairs, evaluation."""
