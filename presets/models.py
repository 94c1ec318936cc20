"""Prompt presets, prompt templates and per-user quotas."""
