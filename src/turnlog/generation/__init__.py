"""Running turns: history from stored rows, provider steps, checkpoints, tools."""
