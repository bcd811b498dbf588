"""The embedded default: generated scenes, a small LAVT trained on them, and its evaluation."""
