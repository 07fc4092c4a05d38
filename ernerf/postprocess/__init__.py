"""After rendering: head motion for new audio, paste-back into the original frames, encoding with audio."""
